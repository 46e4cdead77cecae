"""Tests of the MNER/MRE data readers (mmib_cli.data.conll, mmib_cli.data.mnre) and of the shipped samples/."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import conftest
from mmib_cli.data import conll, mnre
from mmib_cli.data.conll import ConllSentence, conll_stats, entity_spans, fix_bio, image_path, read_conll
from mmib_cli.data.mnre import MNREInstance, load_rel2id, read_mnre
from mmib_cli.errors import DataFormatError, MMIBError

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
BROKEN_SAMPLE_IMAGE = "images/missing.jpg"


def write(tmp_path: Path, text: str, name: str = "data.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


# --------------------------------------------------------------------------------------------- CoNLL (fixtures)


def test_read_conll_fixture_sentences_and_image_ids(conll_file):
    sentences = read_conll(conll_file)
    assert [s.image_id for s in sentences] == ["17_06_1", "16_05_24_2", "1015799"]
    assert [s.line for s in sentences] == [1, 12, 19]
    assert all(isinstance(s, ConllSentence) for s in sentences)
    assert all(len(s.words) == len(s.tags) for s in sentences)
    assert sentences[0].words == ["RT", "@", "warriors", ":", "Kawhi", "Leonard", "visits", "New", "York"]
    assert sentences[0].tags == ["O", "O", "B-ORG", "O", "B-PER", "I-PER", "O", "B-LOC", "I-LOC"]
    assert sentences[1].tags == ["O", "B-MISC", "I-MISC", "I-MISC", "I-MISC"]


def test_last_tweet_without_trailing_blank_line_is_kept(conll_file):
    assert not conll_file.read_text(encoding="utf-8").endswith("\n\n")
    last = read_conll(conll_file)[-1]
    assert last.words == ["St", ".", "Louis", "loves", "Obama"]


def test_stray_i_tag_becomes_b(conll_file):
    last = read_conll(conll_file)[-1]
    assert last.tags == ["O", "O", "B-LOC", "O", "B-PER"]
    raw = read_conll(conll_file, fix_bio_tags=False)[-1]
    assert raw.tags == ["O", "O", "I-LOC", "O", "B-PER"]


def test_conll_stats_fixture(conll_file):
    stats = conll_stats(read_conll(conll_file))
    assert stats == {
        "sentences": 3,
        "tokens": 19,
        "entities": {"PER": 2, "LOC": 2, "ORG": 1, "MISC": 1},
        "total_entities": 6,
        "images": 3,
    }
    # counting is conlleval-style, so the stray I-LOC counts with or without the B- fix
    assert conll_stats(read_conll(conll_file, fix_bio_tags=False)) == stats


# --------------------------------------------------------------------------------------------- CoNLL (edge cases)


def test_other_becomes_misc(tmp_path):
    path = write(tmp_path, "IMGID:1\nthe\tO\nSuper\tB-OTHER\nBowl\tI-OTHER\n")
    (sentence,) = read_conll(path)
    assert sentence.tags == ["O", "B-MISC", "I-MISC"]
    assert conll_stats([sentence])["entities"]["MISC"] == 1


def test_i_after_other_type_becomes_b(tmp_path):
    path = write(tmp_path, "IMGID:1\nNew\tB-LOC\nYork\tI-LOC\nTimes\tI-ORG\nfoo\tO\n")
    (sentence,) = read_conll(path)
    assert sentence.tags == ["B-LOC", "I-LOC", "B-ORG", "O"]


def test_fix_bio_counts_changes():
    assert fix_bio(["I-PER", "I-PER", "O", "I-LOC", "B-ORG", "I-ORG", "I-LOC"]) == (
        ["B-PER", "I-PER", "O", "B-LOC", "B-ORG", "I-ORG", "B-LOC"],
        3,
    )


def test_entity_spans_conlleval_style():
    assert entity_spans(["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG"]) == [
        ("PER", 0, 2),
        ("LOC", 3, 5),
        ("LOC", 5, 6),
        ("ORG", 6, 7),
    ]
    assert entity_spans([]) == []
    assert entity_spans(["O", "O"]) == []


def test_unknown_tag_names_file_and_line(tmp_path):
    path = write(tmp_path, "IMGID:1\nhello\tO\n\nIMGID:2\nworld\tB-FOO\n")
    with pytest.raises(DataFormatError, match=r"data\.txt:5: unknown tag 'B-FOO'") as info:
        read_conll(path)
    assert isinstance(info.value, MMIBError)


def test_line_without_tab_is_an_error(tmp_path):
    path = write(tmp_path, "IMGID:1\nhello O\n")
    with pytest.raises(DataFormatError, match=r"data\.txt:2: expected 'token<TAB>TAG'"):
        read_conll(path)


def test_header_without_tokens_is_an_error(tmp_path):
    path = write(tmp_path, "IMGID:1\n\nIMGID:2\nx\tO\n")
    with pytest.raises(DataFormatError, match=r"data\.txt:1: 'IMGID:1' is followed by no token line"):
        read_conll(path)


def test_crlf_bom_extra_blank_lines_and_odd_tokens(tmp_path):
    text = "\ufeffIMGID:O_1\r\na\xa0\tO\r\n\u200b\tO\r\nObama\tB-PER\r\n\r\n\r\n\r\nIMGID:2\r\nb\tO\r\n\r\n"
    sentences = read_conll(write(tmp_path, text))
    assert [s.image_id for s in sentences] == ["O_1", "2"]
    assert sentences[0].words == ["a\xa0", "\u200b", "Obama"]  # tokens are kept byte for byte
    assert sentences[1].line == 8


def test_tokens_without_header_have_no_image(tmp_path):
    (sentence,) = read_conll(write(tmp_path, "Obama\tB-PER\nspeaks\tO\n"))
    assert sentence.image_id is None
    assert sentence.line == 1


def test_header_right_after_tokens_starts_a_new_tweet(tmp_path):
    sentences = read_conll(write(tmp_path, "IMGID:1\na\tO\nIMGID:2\nb\tO\n"))
    assert [(s.image_id, s.words) for s in sentences] == [("1", ["a"]), ("2", ["b"])]


def test_not_utf8_is_a_data_format_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("IMGID:1\ncaf\xe9\tO\n".encode("latin-1"))
    with pytest.raises(DataFormatError, match="not valid UTF-8"):
        read_conll(path)


def test_image_path(conll_file, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "17_06_1.jpg").write_bytes(b"\xff\xd8")
    first, second, _ = read_conll(conll_file)
    assert image_path(first, images) == images / "17_06_1.jpg"
    assert image_path(second, images) is None
    assert image_path(ConllSentence(["x"], ["O"], None, 1), images) is None
    assert image_path(ConllSentence(["x"], ["O"], "../17_06_1", 1), images / "sub") is None


# --------------------------------------------------------------------------------------------- MNRE


def test_read_mnre_fixture(mnre_file):
    instances = read_mnre(mnre_file)
    assert len(instances) == 3
    first = instances[0]
    assert isinstance(first, MNREInstance)
    assert first.words[:2] == ["Kawhi", "Leonard"]
    assert first.head == (0, 2) and first.tail == (5, 6)
    assert first.head_name == "Kawhi Leonard" and first.tail_name == "Raptors"
    assert first.image_id == "twitter_19_31_1_1.jpg"
    assert first.relation == "/per/org/member_of"
    assert [i.relation for i in instances] == ["/per/org/member_of", "/org/loc/locate_at", "None"]
    assert [i.line for i in instances] == [1, 2, 3]
    for inst in instances:
        assert " ".join(inst.words[slice(*inst.head)]) == inst.head_name
        assert " ".join(inst.words[slice(*inst.tail)]) == inst.tail_name


def mnre_line(**overrides) -> str:
    record = {
        "token": ["Obama", "visits", "Paris"],
        "h": {"name": "Obama", "pos": [0, 1]},
        "t": {"name": "Paris", "pos": [2, 3]},
        "img_id": "x.jpg",
        "relation": "None",
    }
    record.update(overrides)
    return repr(record)


def test_mnre_blank_lines_skipped_line_numbers_kept(tmp_path):
    path = write(tmp_path, mnre_line() + "\n\n" + mnre_line(relation="/per/loc/place_of_residence") + "\n\n")
    instances = read_mnre(path)
    assert [(i.line, i.relation) for i in instances] == [(1, "None"), (3, "/per/loc/place_of_residence")]


def test_mnre_never_evaluates_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    path = write(tmp_path, mnre_line() + "\n" + payload + "\n")
    with pytest.raises(DataFormatError, match=r"data\.txt:2: not a Python dict literal"):
        read_mnre(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"h": {"name": "Paris", "pos": [2, 4]}}, r"'h\.pos' \[2, 4\] is not a non-empty \[start, end\) span"),
        ({"t": {"name": "", "pos": [1, 1]}}, r"'t\.pos' \[1, 1\]"),
        ({"t": {"name": "x", "pos": [-1, 1]}}, r"'t\.pos' \[-1, 1\]"),
        ({"h": {"name": "x", "pos": [0]}}, r"'h\.pos' must be \[start, end\] integers"),
        ({"h": {"name": "x", "pos": [0.0, 1]}}, r"'h\.pos' must be \[start, end\] integers"),
        ({"h": {"pos": [0, 1]}}, r"'h' must be a dict with 'name' and 'pos'"),
        ({"relation": "/per/loc/lives_in"}, r"unknown relation '/per/loc/lives_in'"),
        ({"token": []}, r"'token' must be a non-empty list of strings"),
        ({"img_id": 7}, r"'img_id' must be a non-empty string"),
    ],
)
def test_mnre_invalid_instances(tmp_path, overrides, message):
    path = write(tmp_path, mnre_line() + "\n" + mnre_line(**overrides) + "\n")
    with pytest.raises(DataFormatError, match=r"data\.txt:2: " + message):
        read_mnre(path)


def test_mnre_missing_key_and_non_dict(tmp_path):
    with pytest.raises(DataFormatError, match=r"data\.txt:1: missing key\(s\) relation"):
        read_mnre(write(tmp_path, "{'token': ['a'], 'h': {}, 't': {}, 'img_id': 'x.jpg'}\n"))
    with pytest.raises(DataFormatError, match=r"data\.txt:1: expected a dict, got list"):
        read_mnre(write(tmp_path, "[1, 2]\n"))


def test_mnre_json_lines_also_parse(tmp_path):
    record = {
        "token": ["Kawhi", "joins", "Raptors"],
        "h": {"name": "Kawhi", "pos": [0, 1]},
        "t": {"name": "Raptors", "pos": [2, 3]},
        "img_id": "y.jpg",
        "relation": "/per/org/member_of",
    }
    (instance,) = read_mnre(write(tmp_path, json.dumps(record) + "\n"))
    assert instance.head == (0, 1) and instance.relation == "/per/org/member_of"


def test_mnre_image_path(mnre_file, tmp_path):
    folder = tmp_path / "img_org"
    folder.mkdir()
    (folder / "twitter_19_31_1_2.jpg").write_bytes(b"\xff\xd8")
    instances = read_mnre(mnre_file)
    assert mnre.image_path(instances[0], folder) is None
    assert mnre.image_path(instances[1], folder) == folder / "twitter_19_31_1_2.jpg"


# --------------------------------------------------------------------------------------------- rel2id


def write_rel2id(tmp_path: Path, mapping) -> Path:
    path = tmp_path / "ours_rel2id.json"
    path.write_text(json.dumps(mapping))
    return path


def canonical_rel2id() -> dict[str, int]:
    return {label: i for i, label in enumerate(mnre.RE_LABELS)}


def test_re_labels_constant():
    assert len(mnre.RE_LABELS) == 23
    assert mnre.RE_LABELS[0] == "None" and mnre.RE_LABELS[22] == "/misc/loc/held_on"
    assert "/per/per/alumi" in mnre.RE_LABELS  # misspelled in the source, kept as is
    assert conll.NER_LABELS == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]


def test_labels_are_the_model_configuration_constants():
    from mmib_cli.model import configuration

    assert conll.NER_LABELS is configuration.NER_LABELS
    assert mnre.RE_LABELS is configuration.RE_LABELS


def test_load_rel2id_fixture(rel2id_file):
    assert load_rel2id(rel2id_file) == canonical_rel2id()


def test_load_rel2id_ok(tmp_path):
    assert load_rel2id(write_rel2id(tmp_path, canonical_rel2id())) == canonical_rel2id()


def test_load_rel2id_rejects_swapped_ids(tmp_path):
    mapping = canonical_rel2id()
    mapping["/per/per/parent"], mapping["/per/per/siblings"] = 2, 1
    with pytest.raises(DataFormatError, match=r"different ids \['/per/per/parent=2 \(expected 1\)'"):
        load_rel2id(write_rel2id(tmp_path, mapping))


def test_load_rel2id_rejects_missing_and_extra(tmp_path):
    mapping = canonical_rel2id()
    del mapping["/per/per/alumi"]
    mapping["/per/per/alumni"] = 7
    with pytest.raises(DataFormatError, match=r"missing \['/per/per/alumi'\]; unexpected \['/per/per/alumni'\]"):
        load_rel2id(write_rel2id(tmp_path, mapping))


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"None": "0"}', '{"None": true}'])
def test_load_rel2id_rejects_bad_json(tmp_path, content):
    path = tmp_path / "rel2id.json"
    path.write_text(content)
    with pytest.raises(DataFormatError, match="rel2id.json"):
        load_rel2id(path)


# --------------------------------------------------------------------------------------------- real data


T15 = {"train": (4000, 64439, 6352, 6166), "valid": (1000, 16178, 1594, 1541), "test": (3257, 52822, 5207, 5072)}
T17_ENTITIES = {
    "train": (3373, 53007, {"PER": 2943, "LOC": 731, "ORG": 1674, "MISC": 701}),
    "valid": (723, 11309, {"PER": 626, "LOC": 173, "ORG": 375, "MISC": 150}),
    "test": (723, 11330, {"PER": 621, "LOC": 178, "ORG": 395, "MISC": 157}),
}
MNRE_SIZES = {"train": 12247, "valid": 1624, "test": 1614}


@pytest.mark.shared_data
@pytest.mark.parametrize("split", sorted(T17_ENTITIES))
def test_twitter2017_counts(split):
    tweets, tokens, entities = T17_ENTITIES[split]
    sentences = read_conll(conftest.SHARED_DATA / "twitter2017" / f"{split}.txt")
    stats = conll_stats(sentences)
    assert stats["sentences"] == tweets
    assert stats["tokens"] == tokens
    assert stats["entities"] == entities
    assert stats["total_entities"] == sum(entities.values())
    assert len({s.image_id for s in sentences}) == tweets
    assert read_conll(conftest.SHARED_DATA / "twitter2017" / f"{split}.txt", fix_bio_tags=False) == sentences


@pytest.mark.shared_data
@pytest.mark.parametrize("split", sorted(T15))
def test_twitter2015_counts(split):
    tweets, tokens, chunks, b_tags = T15[split]
    path = conftest.SHARED_DATA / "twitter2015" / f"{split}.txt"
    sentences = read_conll(path)
    stats = conll_stats(sentences)
    assert stats["sentences"] == tweets  # the last tweet (no trailing blank line) is not lost
    assert stats["tokens"] == tokens
    assert stats["total_entities"] == chunks  # conlleval / seqeval default-mode count
    assert len({s.image_id for s in sentences}) == tweets
    assert all(s.image_id.isdigit() for s in sentences)
    raw = read_conll(path, fix_bio_tags=False)
    assert sum(t.startswith("B-") for s in raw for t in s.tags) == b_tags  # strict count, SOURCES.md §3
    assert all(not t.endswith("OTHER") for s in raw for t in s.tags)


@pytest.mark.shared_data
def test_twitter2015_train_per_type():
    stats = conll_stats(read_conll(conftest.SHARED_DATA / "twitter2015" / "train.txt"))
    assert stats["entities"] == {"PER": 2285, "LOC": 2135, "ORG": 957, "MISC": 975}


@pytest.mark.shared_data
@pytest.mark.parametrize("split", sorted(MNRE_SIZES))
def test_mnre_counts(split):
    instances = read_mnre(conftest.SHARED_DATA / "mnre" / f"{split}.txt")
    assert len(instances) == MNRE_SIZES[split]
    assert [i.line for i in instances] == list(range(1, len(instances) + 1))  # line - 1 = aux-dict key
    if split == "train":
        counts = Counter(i.relation for i in instances)
        assert len(counts) == 23
        assert counts["None"] == 7744
        assert counts["/per/per/peer"] == 960
        assert max(len(i.words) for i in instances) == 35


@pytest.mark.shared_data
def test_real_rel2id():
    mapping = load_rel2id(conftest.SHARED_DATA / "mnre" / "ours_rel2id.json")
    assert len(mapping) == 23
    assert mapping["None"] == 0 and mapping["/misc/loc/held_on"] == 22


# --------------------------------------------------------------------------------------------- samples/


def sample_posts() -> list[dict]:
    lines = (SAMPLES / "posts.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_every_sample_image_is_credited_in_readme():
    readme = (SAMPLES / "README.md").read_text(encoding="utf-8")
    images = sorted(p for p in (SAMPLES / "images").iterdir() if p.is_file())
    assert 4 <= len(images) <= 6
    for image in images:
        assert f"images/{image.name}" in readme, f"{image.name} is not listed in samples/README.md"
        assert image.suffix == ".jpg"
        assert image.stat().st_size < 150_000


def test_sample_images_are_small_jpegs():
    from PIL import Image

    for image in (SAMPLES / "images").glob("*.jpg"):
        with Image.open(image) as img:
            assert img.format == "JPEG"
            assert max(img.size) <= 800


def test_sample_posts_image_paths():
    posts = sample_posts()
    assert len(posts) == 14
    assert len({p["id"] for p in posts}) == len(posts)
    assert all(isinstance(p["text"], str) and p["text"] for p in posts)
    assert any("image" not in p for p in posts)
    assert any("image" in p and p["image"] is None for p in posts)
    assert sum(p.get("image") == BROKEN_SAMPLE_IMAGE for p in posts) == 1
    assert not (SAMPLES / BROKEN_SAMPLE_IMAGE).exists()
    with_images = [p["image"] for p in posts if p.get("image")]
    assert len(with_images) >= 5
    for rel in with_images:
        assert not Path(rel).is_absolute()
        assert (SAMPLES / rel).is_file() or rel == BROKEN_SAMPLE_IMAGE, rel
    used = {Path(rel).name for rel in with_images}
    assert {p.name for p in (SAMPLES / "images").glob("*.jpg")} <= used  # every shipped image is used
