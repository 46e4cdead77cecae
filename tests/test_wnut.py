"""WNUT-17 files read by `iter_conll`: lone-tab sentence breaks, no headers, types mapped to PER/LOC/ORG/MISC."""
from __future__ import annotations

import pytest

import conftest
from mmib_cli.data.conll import WNUT17_TYPES, conll_stats, entity_spans, read_conll
from mmib_cli.errors import DataFormatError

# the real file's layout: token<TAB>tag lines, sentences separated by a line holding one tab
WNUT_SAMPLE = ("@paulwalk\tO\nEmpire\tB-location\nState\tI-location\nBuilding\tI-location\n=\tO\nESB\tB-location\n"
               "\t\nAHFA\tB-group\nand\tO\nPepsi\tB-corporation\nlove\tO\n#BattlestarGalactica\tB-creative-work\n"
               "on\tO\nHTC\tB-product\nDesire\tI-product\nwith\tO\nScooter\tB-person\nBraun\tI-person\n\t\n")


def test_wnut_sentences_and_type_mapping(tmp_path):
    path = tmp_path / "wnut.conll"
    path.write_text(WNUT_SAMPLE, encoding="utf-8")
    first, second = read_conll(path)
    assert first.image_id is None and first.line == 1 and second.line == 8
    assert first.words[:2] == ["@paulwalk", "Empire"]
    assert entity_spans(first.tags) == [("LOC", 1, 4), ("LOC", 5, 6)]
    assert entity_spans(second.tags) == [("ORG", 0, 1), ("ORG", 2, 3), ("MISC", 4, 5), ("MISC", 6, 8),
                                         ("PER", 9, 11)]


def test_every_wnut_type_has_a_target():
    assert WNUT17_TYPES == {"person": "PER", "location": "LOC", "corporation": "ORG", "group": "ORG",
                            "product": "MISC", "creative-work": "MISC"}


def test_unknown_tag_still_names_the_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("Apple\tB-company\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad.conll:1: unknown tag 'B-company'"):
        read_conll(path)


@pytest.mark.shared_data
@pytest.mark.parametrize(("split", "sentences", "entities"), [
    ("train", 3394, {"PER": 660, "LOC": 548, "ORG": 485, "MISC": 282}),
    ("dev", 1009, {"PER": 470, "LOC": 74, "ORG": 73, "MISC": 219}),
])
def test_wnut17_counts(split, sentences, entities):
    stats = conll_stats(read_conll(conftest.SHARED_DATA / "wnut17" / f"{split}.conll"))
    assert stats["sentences"] == sentences and stats["entities"] == entities and stats["images"] == 0


def test_lowercase_copies_follow_the_sentences_with_their_tags(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer

    from mmib_cli.data.datasets import read_examples
    from mmib_cli.features import Featurizer
    from mmib_cli.model.configuration import NER_LABELS

    path = tmp_path / "wnut.conll"
    path.write_text(WNUT_SAMPLE, encoding="utf-8")
    featurizer = Featurizer(AutoTokenizer.from_pretrained(str(tiny_bert_dir)))
    plain = read_examples("ner", [path], featurizer, NER_LABELS)
    both = read_examples("ner", [path], featurizer, NER_LABELS, lowercase_copies=True)
    assert both.gold == plain.gold + plain.gold
    assert len(both.windows_per_post) == 4 and both.windows[:len(plain.windows)] == plain.windows
    copy = both.windows_per_post[2][0]
    assert copy.labels == plain.windows_per_post[0][0].labels  # the copy of the first sentence, same tags
    # an uncased vocabulary gives the same pieces; only the word shapes lose their capitals
    assert copy.input_ids == plain.windows_per_post[0][0].input_ids
    assert copy.word_shape_ids != plain.windows_per_post[0][0].word_shape_ids
    limited = read_examples("ner", [path], featurizer, NER_LABELS, limit=1, lowercase_copies=True)
    assert len(limited.gold) == 2


def test_mention_swapped_copies_keep_the_context_and_draw_mentions_of_the_same_type(tmp_path):
    from mmib_cli.data.augment import mention_swapped

    path = tmp_path / "wnut.conll"
    path.write_text(WNUT_SAMPLE, encoding="utf-8")
    sentences = read_conll(path)
    pool = {kind: {tuple(s.words[b:e]) for s in sentences for k, b, e in entity_spans(s.tags) if k == kind}
            for kind in ("PER", "LOC", "ORG", "MISC")}
    copies_by_seed = [mention_swapped(sentences, seed=seed) for seed in range(8)]
    for copies in copies_by_seed:
        assert len(copies) == len(sentences)
        for original, copy in zip(sentences, copies):
            assert (copy.image_id, copy.line) == (original.image_id, original.line)
            assert len(copy.words) == len(copy.tags)
            spans, old_spans = entity_spans(copy.tags), entity_spans(original.tags)
            assert [k for k, _, _ in spans] == [k for k, _, _ in old_spans]  # same types, same order
            for kind, begin, end in spans:
                assert tuple(copy.words[begin:end]) in pool[kind]
                assert copy.tags[begin:end] == [f"B-{kind}"] + [f"I-{kind}"] * (end - begin - 1)
            outside = [w for i, w in enumerate(copy.words) if copy.tags[i] == "O"]
            assert outside == [w for i, w in enumerate(original.words) if original.tags[i] == "O"]
    assert copies_by_seed[3] == mention_swapped(sentences, seed=3)  # seeded: the same copies every run
    assert any(c.words != s.words for copies in copies_by_seed for c, s in zip(copies, sentences))
    assert len({tuple(tuple(c.words) for c in copies) for copies in copies_by_seed}) > 1


def test_mention_swaps_add_one_copy_per_sentence(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer

    from mmib_cli.data.datasets import read_examples
    from mmib_cli.features import Featurizer
    from mmib_cli.model.configuration import NER_LABELS

    path = tmp_path / "wnut.conll"
    path.write_text(WNUT_SAMPLE, encoding="utf-8")
    featurizer = Featurizer(AutoTokenizer.from_pretrained(str(tiny_bert_dir)))
    plain = read_examples("ner", [path], featurizer, NER_LABELS)
    swapped = read_examples("ner", [path], featurizer, NER_LABELS, mention_swaps=True, seed=5)
    assert swapped.gold[:2] == plain.gold and len(swapped.gold) == 4
    assert swapped.windows[:len(plain.windows)] == plain.windows
    both = read_examples("ner", [path], featurizer, NER_LABELS, lowercase_copies=True, mention_swaps=True, seed=5)
    assert len(both.gold) == 6 and both.gold[4:] == swapped.gold[2:]


@pytest.mark.parametrize(("task", "flag"), [("ner", "reverse_pairs"), ("re", "lowercase_copies"),
                                            ("re", "mention_swaps")])
def test_an_augmentation_of_the_other_task_is_refused(task, flag):
    from mmib_cli.errors import UsageError
    from mmib_cli.workflows.train import TrainOptions

    with pytest.raises(UsageError, match="is for"):
        TrainOptions(task=task, train_files=["t"], valid_files=["v"], output="o", **{flag: True})
