"""Issue 25, points 4 and 5: line formats read back exactly what was written, whatever the posts hold; image paths
from posts are confined to the image root; thumbnails are decoded with a memory bound."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from cli_helpers import invoke, write_jsonl

from mmib_cli.data.conll import ConllSentence, read_conll
from mmib_cli.data.mnre import MNREInstance, read_mnre
from mmib_cli.data.writers import UnwritableExample, conll_block, mnre_line, write_conll, write_mnre
from mmib_cli.errors import UsageError
from mmib_cli.workflows.export import ImageRefs, conll_sentence_of, label_studio_task, normalise_url_prefix
from mmib_cli.model.configuration import NER_LABELS, RE_LABELS

HOSTILE = ["\n", "\r", "\r\n", "\t", " ", "\x00", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\ufeff", "\u200b",
           "IMGID:", "IMGID:evil", "B-ORG", "\\", "'", '"', "{", "}", "_", "#", "é", "🚀", "\ud800", "\udfff", "x", "Obama"]
TAGS = NER_LABELS + ["B-OTHER", "I-OTHER", "B-person", "I-group", "X-BAD", "", "B-"]


def _hostile_text(rng: random.Random, most: int = 6) -> str:
    return "".join(rng.choice(HOSTILE) for _ in range(rng.randint(0, most)))


def _hostile_record(rng: random.Random, line: int) -> dict:
    n = rng.randint(0, 6)
    record = {"id": _hostile_text(rng), "line": line, "text": _hostile_text(rng, 12),
              "tokens": [{"text": _hostile_text(rng)} for _ in range(n)],
              "bio": [rng.choice(TAGS) for _ in range(n)]}
    if rng.random() < 0.7:
        record["image"] = _hostile_text(rng) + rng.choice([".jpg", ".png", "", "/x.jpg"])
    return record


def test_conll_export_reads_back_exactly_what_was_exported(tmp_path):
    """A property test: 600 random hostile records, each either exported so that `read_conll` gives back exactly
    its exported sentence, or refused (left out) with a reason; never an extra token, a split sentence or an
    unreadable file."""
    rng = random.Random(25)
    for trial in range(30):
        exported, refused = [], 0
        for line in range(1, 21):
            record = _hostile_record(rng, line)
            try:
                exported.append((conll_sentence_of(record), conll_block(conll_sentence_of(record))))
            except ValueError:
                refused += 1
        path = tmp_path / f"t{trial}.txt"
        path.write_bytes("".join(block for _, block in exported).encode("utf-8"))
        back = read_conll(path)
        assert [(s.words, s.tags, s.image_id) for s in back] == \
               [(s.words, s.tags, s.image_id) for s, _ in exported], trial
        assert len(exported) + refused == 20


@pytest.mark.parametrize("record, reason", [
    ({"tokens": ["a"], "bio": ["O"], "image": "x\nObama\tB-ORG.jpg"}, "image id"),
    ({"tokens": ["IMGID:evil"], "bio": ["O"]}, "header"),
    ({"tokens": ["a"], "bio": ["O"], "image": "photo\n\n.jpg"}, "image id"),
    ({"tokens": ["\ud800"], "bio": ["O"]}, "not valid Unicode"),
])
def test_the_hostile_examples_of_the_issue_are_refused(record, reason):
    with pytest.raises(ValueError, match=reason):
        conll_block(conll_sentence_of({"line": 1, **record}))


def test_the_export_command_leaves_out_and_counts_unwritable_records(tmp_path):
    rows = [{"id": 1, "line": 1, "text": "a b", "tokens": [{"text": "a"}, {"text": "b"}], "bio": ["B-PER", "O"],
             "image": "x\nObama\tB-ORG.jpg", "entities": []},
            {"id": 2, "line": 2, "text": "c", "tokens": [{"text": "c"}], "bio": ["B-LOC"], "entities": []}]
    src = write_jsonl(tmp_path / "out.jsonl", rows)
    result = invoke("export", src, "--format", "conll", "-o", tmp_path / "t.txt")
    assert result.exit_code == 0 and "1 error/skipped records left out" in result.stderr, result.output
    assert [(s.words, s.tags) for s in read_conll(tmp_path / "t.txt")] == [(["c"], ["B-LOC"])]


def test_training_writers_round_trip_or_refuse(tmp_path):
    rng = random.Random(7)
    sentences = [ConllSentence([_hostile_text(rng) for _ in range(rng.randint(1, 4))], [], None, i)
                 for i in range(1, 200)]
    for s in sentences:
        s.tags = [rng.choice(NER_LABELS) for _ in s.words]
        s.image_id = rng.choice([None, "123", _hostile_text(rng)])
    kept = []
    for s in sentences:
        try:
            conll_block(s)
            kept.append(s)
        except UnwritableExample:
            pass
    assert write_conll(tmp_path / "c.txt", sentences) == len(kept)
    assert len(read_conll(tmp_path / "c.txt")) == len(kept)
    instances = [MNREInstance([_hostile_text(rng) or "w" for _ in range(3)], (0, 1), (1, 3), _hostile_text(rng),
                              _hostile_text(rng), rng.choice(["a.jpg", _hostile_text(rng)]),
                              rng.choice(RE_LABELS), i) for i in range(1, 100)]
    writable = []
    for x in instances:
        try:
            mnre_line(x)
            writable.append(x)
        except UnwritableExample:
            pass
    assert 0 < len(writable) < len(instances)  # lone surrogates are refused, everything else is written
    assert write_mnre(tmp_path / "m.txt", instances) == len(writable)
    assert [(x.words, x.head, x.tail, x.head_name, x.tail_name, x.image_id, x.relation)
            for x in read_mnre(tmp_path / "m.txt")] == \
           [(x.words, x.head, x.tail, x.head_name, x.tail_name, x.image_id or "none.jpg", x.relation)
            for x in writable]


def test_label_studio_tasks_read_back_exactly(tmp_path):
    rng = random.Random(3)
    rows = []
    for line in range(1, 40):
        text = _hostile_text(rng, 20) or "x"
        rows.append({"id": _hostile_text(rng), "line": line, "text": text, "image": _hostile_text(rng) + ".jpg",
                     "entities": [{"text": text[:1], "label": "PER", "start": 0, "end": 1, "score": 0.5}],
                     "model": _hostile_text(rng)})
    src = tmp_path / "out.jsonl"
    src.write_bytes(b"".join(json.dumps(r, ensure_ascii=True).encode() + b"\n" for r in rows))
    read = [json.loads(line) for line in src.read_bytes().splitlines()]  # as `export` reads them (pairs joined)
    result = invoke("export", src, "-o", tmp_path / "tasks.json", "--no-confine-images")
    assert result.exit_code == 0, result.output
    tasks = json.loads((tmp_path / "tasks.json").read_bytes().decode("utf-8"))
    assert tasks == [label_studio_task(r, image=r["image"]) for r in read]


# -- --image-url-prefix ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix, normalised", [
    ("http://h/images/", "http://h/images"),
    ("https://h/a/../images", "https://h/images"),
    ("/static/./img/", "/static/img"),
    ("http://h", "http://h"),
])
def test_url_prefixes_are_normalised(prefix, normalised):
    assert normalise_url_prefix(prefix) == normalised


@pytest.mark.parametrize("prefix", ["ftp://h/x", "images/", "http://h/x?y=", "http://h/x#f", "javascript:alert(1)"])
def test_odd_url_prefixes_are_usage_errors(prefix):
    with pytest.raises(UsageError):
        normalise_url_prefix(prefix)


def test_url_prefix_references_stay_under_the_prefix(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "images" / "out.jpg").symlink_to(tmp_path / "secret" / "b.jpg")
    refs = ImageRefs(root, url_prefix="https://h/images/")
    assert refs.reference("images/a b?.jpg") == "https://h/images/images/a%20b%3F.jpg"
    for image in ("../secret/b.jpg", str(tmp_path / "secret" / "b.jpg"), "images/out.jpg", "images/../../x.jpg"):
        with pytest.raises(ValueError, match="outside the image root"):
            refs.reference(image)


# -- point 5: confinement and thumbnails ----------------------------------------------------------------------
@pytest.fixture
def planted(tmp_path, sample_images) -> tuple[Path, Path]:
    """An output in `root/` whose posts name a photo inside it, one outside (absolute, ../) and a symlink out."""
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(sample_images["red"].read_bytes())
    (root / "inside.jpg").write_bytes(sample_images["blue"].read_bytes())
    (root / "link.jpg").symlink_to(secret)
    rows = [{"id": i, "line": i, "text": "Obama", "entities": [], "image": image}
            for i, image in enumerate(["inside.jpg", str(secret), "../secret.jpg", "link.jpg"], 1)]
    return write_jsonl(root / "out.jsonl", rows), secret


def test_report_embeds_only_pictures_under_the_image_root(planted, tmp_path):
    from mmib_cli.workflows.report import ReportOptions, build_report

    src, _ = planted
    confined = build_report(ReportOptions(input=str(src), output=str(tmp_path / "r.html")))
    assert (confined.thumbnails, confined.image_problems) == (1, 3)
    assert "outside the image root" in (tmp_path / "r.html").read_text(encoding="utf-8")
    trusted = build_report(ReportOptions(input=str(src), output=str(tmp_path / "t.html"), confine_images=False))
    assert trusted.thumbnails == 4 and trusted.image_problems == 0


def test_export_references_only_pictures_under_the_image_root(planted, tmp_path):
    src, _ = planted
    result = invoke("export", src, "-o", tmp_path / "t.json")
    assert result.exit_code == 0
    images = [task["data"]["image"] for task in json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))]
    assert images == ["inside.jpg", "", "", ""]
    invoke("export", src, "-o", tmp_path / "u.json", "--no-confine-images", expect=0)
    assert all(task["data"]["image"] for task in json.loads((tmp_path / "u.json").read_text(encoding="utf-8")))


def test_annotate_confines_images_when_asked(planted, tiny_text_only_ner, tmp_path):
    src, _ = planted
    out = tmp_path / "a.jsonl"
    result = invoke("annotate", src, "-o", out, "-m", tiny_text_only_ner, "--num-workers", "0", "--confine-images",
                    "--on-missing-image", "error")
    assert result.exit_code == 3
    kinds = [json.loads(x).get("error", {}).get("type") for x in out.read_bytes().splitlines()]
    assert kinds == [None, "ImageOutsideRoot", "ImageOutsideRoot", "ImageOutsideRoot"]
    result = invoke("annotate", src, "-o", tmp_path / "b.jsonl", "-m", tiny_text_only_ner, "--num-workers", "0",
                    "--on-missing-image", "error")
    assert result.exit_code == 0  # without the option, as before: the user's own posts may name any file


def test_thumbnails_shrink_before_converting_and_refuse_huge_pictures(tmp_path, monkeypatch):
    from PIL import Image

    import mmib_cli.io.images as images
    from mmib_cli.io.images import ImageError, open_thumbnail

    big = tmp_path / "big16.png"
    Image.new("I;16", (1600, 1200), 40000).save(big)
    seen = []
    real = images.to_rgb
    monkeypatch.setattr(images, "to_rgb", lambda im: seen.append(im.size) or real(im))
    thumb = open_thumbnail(big, 160)
    assert max(thumb.size) == 160 and seen and max(seen[0]) < 400  # converted after the 10x box reduction
    assert thumb.getpixel((0, 0))[0] == round(40000 / 257)
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 7000)).save(huge)  # 56 M pixels: 7 MB to decode as 1-bit, over the thumbnail bound
    with pytest.raises(ImageError) as info:
        open_thumbnail(huge, 160)
    assert info.value.error_type == "DecompressionBomb"
