"""Acceptance tests of `mmib annotate` / `mmib relations` (issue 6): bad input, images, order, resume, options.

Every command runs through CliRunner with argv lists; output files and stdout are parsed as JSONL and every line
is checked against the shipped JSON Schema and the offset contract (`text[start:end] == token/entity text`).
Models are the tiny random checkpoints of conftest.py: `tiny_bundle` (NER + RE, takes images) and
`tiny_text_only_ner` (text only, fastest).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import UNICODE_TEXT, invoke, make_posts, parse_jsonl, read_out, subprocess_env, write_jsonl



# -- one run over every kind of bad input (each case asserted by its own test) ---------------------------------------
BAD_LINES = {
    "good-image": {"id": "good-image", "text": "Kawhi Leonard joins the Clippers", "image": "@red"},
    "malformed": '{"id": "malformed", "text": "unterminated',
    "not-object": '["a", "list", "not", "an", "object"]',
    "missing-text": {"id": "missing-text", "body": "no text field"},
    "number-text": {"id": "number-text", "text": 42},
    "blank": "",  # a `skipped` record: line numbers stay physical, one output line per input line
    "empty-text": {"id": "empty-text", "text": ""},
    "unicode": {"id": "unicode", "text": UNICODE_TEXT},
    "missing-image": {"id": "missing-image", "text": "Picture of Berlin", "image": "does/not/exist.jpg"},
    "corrupt-image": {"id": "corrupt-image", "text": "Picture of Berlin", "image": "@corrupt"},
    "truncated-image": {"id": "truncated-image", "text": "Picture of Berlin", "image": "@truncated"},
    "text-file-image": {"id": "text-file-image", "text": "Picture of Berlin", "image": "@text"},
    "endless-image": {"id": "endless-image", "text": "Picture of Berlin", "image": "/dev/zero"},  # never ends
    "directory-image": {"id": "directory-image", "text": "Picture of Berlin", "image": "/"},
    "bomb": {"id": "bomb", "text": "A huge picture", "image": "@bomb"},
    "cmyk": {"id": "cmyk", "text": "CMYK picture", "image": "@cmyk"},
    "alpha": {"id": "alpha", "text": "PNG with alpha", "image": "@alpha"},
    "gray": {"id": "gray", "text": "Grayscale picture", "image": "@gray"},
    "exif": {"id": "exif", "text": "Rotated picture", "image": "@exif"},
    "dup-1": {"id": "dup", "text": "first post with id dup"},
    "dup-2": {"id": "dup", "text": "second post with id dup", "image": "@blue"},
    "null-image": {"id": "null-image", "text": "no image here", "image": None},
    "no-id": {"text": "a post without an id"},
    "surrogate": '{"id": "surrogate", "text": "broken \\ud800 escape"}',
    "given-tokens": {"id": "given-tokens", "text": "New York rocks tonight",
                     "tokens": ["New York", "rocks", "tonight"]},
    "bad-tokens": {"id": "bad-tokens", "text": "New York rocks", "tokens": ["Boston"]},
    "non-finite": '{"id": "non-finite", "text": "Obama", "score": NaN, "more": [Infinity, -Infinity, 1e999]}',
    "too-deep": '{"id": "too-deep", "text": "x", "v": ' + "[" * 5000 + "]" * 5000 + "}",  # over the recursion limit
    "deep": '{"id": "deep", "text": "x", "v": ' + "[" * 500 + "]" * 500 + "}",  # parses, but deeper than 100
    "last-good": {"id": "last-good", "text": "The run went on to the end"},
}


def _materialise(images: dict[str, Path], rows: dict) -> list:
    out = []
    for row in rows.values():
        if isinstance(row, dict) and isinstance(row.get("image"), str) and row["image"].startswith("@"):
            row = {**row, "image": str(images[row["image"][1:]])}
        out.append(row)
    return out


@pytest.fixture(scope="module")
def bad_run(tiny_bundle, images, tmp_path_factory, check):
    """`mmib annotate` over BAD_LINES with the image-using tiny bundle."""
    d = tmp_path_factory.mktemp("bad-run")
    rows = _materialise(images, BAD_LINES)
    src = write_jsonl(d / "in.jsonl", rows)
    result = invoke("annotate", src, "-o", d / "out.jsonl", "-m", tiny_bundle, "--num-workers", "0")
    records = read_out(d / "out.jsonl", check)
    keys = list(BAD_LINES)
    return {"result": result, "records": records, "by_key": dict(zip(keys, records)),
            "lines": {key: number for number, key in enumerate(keys, 1)}, "output": d / "out.jsonl"}


def test_bad_input_run_finishes_with_exit_3_and_one_line_per_input(bad_run):
    assert bad_run["result"].exit_code == 3, bad_run["result"].output
    records = bad_run["records"]
    assert len(records) == len(BAD_LINES)
    assert [r["line"] for r in records] == list(bad_run["lines"].values())  # in input order, in place
    assert records[-1]["id"] == "last-good" and "error" not in records[-1]
    assert "errors" in bad_run["result"].stderr  # the summary line


def _error_of(bad_run, key: str) -> dict:
    rec = bad_run["by_key"][key]
    assert set(rec) == {"id", "line", "error"}, rec
    assert rec["line"] == bad_run["lines"][key]
    assert set(rec["error"]) == {"type", "message"} and rec["error"]["message"]
    return rec


def test_malformed_json_is_an_error_record(bad_run):
    rec = _error_of(bad_run, "malformed")
    assert rec["error"]["type"] == "InvalidJSON"
    assert rec["id"] == rec["line"]  # no id could be read


def test_non_object_line_is_an_error_record(bad_run):
    rec = _error_of(bad_run, "not-object")
    assert rec["error"]["type"] == "InvalidInput" and "object" in rec["error"]["message"]


def test_missing_text_is_an_error_record(bad_run):
    rec = _error_of(bad_run, "missing-text")
    assert rec["id"] == "missing-text"
    assert rec["error"]["type"] == "InvalidInput" and '"text"' in rec["error"]["message"]


def test_non_string_text_is_an_error_record(bad_run):
    rec = _error_of(bad_run, "number-text")
    assert rec["error"]["type"] == "InvalidInput" and "string" in rec["error"]["message"]


def test_lone_surrogate_text_is_an_error_record(bad_run):
    rec = _error_of(bad_run, "surrogate")
    # json accepts a lone surrogate escape (then the text check refuses it); orjson, which jsonlines uses when it
    # is installed, refuses it while parsing. Either way the line is an error record naming the surrogate.
    assert rec["error"]["type"] in ("InvalidInput", "InvalidJSON") and "surrogate" in rec["error"]["message"]


def test_blank_line_is_a_skipped_record(bad_run):
    line = bad_run["lines"]["blank"]
    assert bad_run["by_key"]["blank"] == {"id": line, "line": line, "skipped": {"reason": "blank line"}}


def test_non_finite_numbers_pass_through_as_null(bad_run):
    rec = bad_run["by_key"]["non-finite"]
    assert "error" not in rec and rec["entities"] is not None
    assert rec["score"] is None and rec["more"] == [None, None, None]

    def refuse(constant: str):
        raise ValueError(f"non-strict JSON constant {constant}")

    for raw in bad_run["output"].read_bytes().splitlines():  # the whole output is strict JSON
        json.loads(raw, parse_constant=refuse)


def test_nesting_deeper_than_the_limit_is_an_error_record(bad_run):
    for key in ("too-deep", "deep"):
        rec = _error_of(bad_run, key)
        assert rec["error"]["type"] == "InvalidInput" and "nested deeper than 100" in rec["error"]["message"]


def test_empty_text_is_annotated_with_no_tokens(bad_run):
    rec = bad_run["by_key"]["empty-text"]
    assert rec["text"] == "" and rec["tokens"] == [] and rec["bio"] == [] and rec["entities"] == []


def test_unicode_offsets_are_exact(bad_run):
    rec = bad_run["by_key"]["unicode"]
    assert rec["text"] == UNICODE_TEXT
    covered = {i for t in rec["tokens"] for i in range(t["start"], t["end"])}
    assert covered == {i for i, ch in enumerate(UNICODE_TEXT) if not ch.isspace()}
    texts = [t["text"] for t in rec["tokens"]]
    assert "👨\u200d👩\u200d👧" in texts and "cafe\u0301" in texts and "👋🏾" in texts and "🇺🇸" in texts


@pytest.mark.parametrize("key,kind", [
    ("missing-image", "ImageNotFound"), ("corrupt-image", "ImageUnreadable"),
    ("truncated-image", "ImageUnreadable"), ("text-file-image", "ImageUnreadable"),
    ("endless-image", "ImageUnreadable"), ("directory-image", "ImageUnreadable"),
])
def test_unusable_image_falls_back_to_text_by_default(bad_run, key, kind):
    rec = bad_run["by_key"][key]
    assert "error" not in rec
    assert rec["image_used"] is False
    assert rec["image_error"].startswith(kind)
    assert len(rec["bio"]) == len(rec["tokens"]) == 3


def test_decompression_bomb_is_an_error_record(bad_run):
    rec = _error_of(bad_run, "bomb")
    assert rec["error"]["type"] == "DecompressionBomb"
    assert "bomb.png" in rec["error"]["message"]


@pytest.mark.parametrize("key", ["good-image", "cmyk", "alpha", "gray", "exif", "dup-2"])
def test_images_of_any_mode_are_used(bad_run, key):
    rec = bad_run["by_key"][key]
    assert rec["image_used"] is True and "image_error" not in rec


def test_posts_without_image_are_text_only(bad_run):
    for key in ("null-image", "no-id", "dup-1", "empty-text"):
        rec = bad_run["by_key"][key]
        assert rec["image_used"] is False and "image_error" not in rec


def test_duplicate_ids_are_both_annotated(bad_run):
    first, second = bad_run["by_key"]["dup-1"], bad_run["by_key"]["dup-2"]
    assert first["id"] == second["id"] == "dup"
    assert first["text"].startswith("first") and second["text"].startswith("second")
    assert first["line"] < second["line"]


def test_missing_id_becomes_the_line_number(bad_run):
    rec = bad_run["by_key"]["no-id"]
    assert rec["id"] == rec["line"] == bad_run["lines"]["no-id"]


def test_input_tokens_replace_the_tokenizer(bad_run):
    rec = bad_run["by_key"]["given-tokens"]
    assert [t["text"] for t in rec["tokens"]] == ["New York", "rocks", "tonight"]
    assert rec["tokens"][0] == {"text": "New York", "start": 0, "end": 8}
    rec = _error_of(bad_run, "bad-tokens")
    assert rec["error"]["type"] == "InvalidInput" and "Boston" in rec["error"]["message"]


def test_input_fields_pass_through(bad_run):
    rec = bad_run["by_key"]["good-image"]
    assert list(rec)[:4] == ["id", "line", "text", "image"]
    assert rec["model"].startswith("bundle@")


def test_empty_text_alone_exits_0(tiny_text_only_ner, tmp_path, check):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "e", "text": ""}])
    result = invoke("annotate", src, "-o", tmp_path / "out.jsonl", "-m", tiny_text_only_ner, "--num-workers", "0")
    assert result.exit_code == 0, result.output
    [rec] = read_out(tmp_path / "out.jsonl", check)
    assert rec["tokens"] == [] and rec["bio"] == [] and rec["image_used"] is False


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_on_missing_image_policies(policy, tiny_bundle, images, tmp_path, check):
    rows = [{"id": "ok", "text": "Obama in Berlin", "image": str(images["red"])},
            {"id": "missing", "text": "Obama in Berlin", "image": "nope.jpg"},
            {"id": "corrupt", "text": "Obama in Berlin", "image": str(images["corrupt"])},
            {"id": "truncated", "text": "Obama in Berlin", "image": str(images["truncated"])},
            {"id": "not-image", "text": "Obama in Berlin", "image": str(images["text"])},
            {"id": "no-image", "text": "Obama in Berlin"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = invoke("annotate", src, "-o", tmp_path / "out.jsonl", "-m", tiny_bundle, "--num-workers", "0",
                    "--on-missing-image", policy)
    records = read_out(tmp_path / "out.jsonl", check)
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    assert records[0]["image_used"] is True and records[-1]["image_used"] is False
    kinds = ["ImageNotFound", "ImageUnreadable", "ImageUnreadable", "ImageUnreadable"]
    if policy == "error":
        assert result.exit_code == 3, result.output
        assert [r["error"]["type"] for r in records[1:5]] == kinds
    else:
        assert result.exit_code == 0, result.output  # skipping on purpose is not an error
        for rec, kind in zip(records[1:5], kinds):
            assert set(rec) == {"id", "line", "skipped"} and rec["skipped"]["reason"].startswith(kind)


@pytest.mark.parametrize("policy", ["error", "skip", "text-only"])
def test_on_missing_image_checks_images_a_text_only_model_never_reads(policy, tiny_text_only_ner, images, tmp_path,
                                                                     check):
    """The model reads no pixels, yet `error`/`skip` apply to unusable images; `text-only` leaves them alone."""
    os.mkfifo(tmp_path / "pipe.jpg")  # a FIFO without a writer: must not block the run
    (tmp_path / "folder.jpg").mkdir()
    rows = [{"id": "ok", "text": "Obama in Berlin", "image": str(images["red"])},
            {"id": "missing", "text": "Obama in Berlin", "image": "nope.jpg"},
            {"id": "not-image", "text": "Obama in Berlin", "image": str(images["text"])},
            {"id": "fifo", "text": "Obama in Berlin", "image": "pipe.jpg"},
            {"id": "dir", "text": "Obama in Berlin", "image": "folder.jpg"},
            {"id": "no-image", "text": "Obama in Berlin"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = invoke("annotate", src, "-o", tmp_path / "out.jsonl", "-m", tiny_text_only_ner, "--num-workers", "0",
                    "--on-missing-image", policy, expect={"error": 3, "skip": 0, "text-only": 0}[policy])
    records = read_out(tmp_path / "out.jsonl", check)
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    for rec in (records[0], records[-1]):
        assert rec["image_used"] is False and "image_error" not in rec and rec["entities"] is not None
    kinds = ["ImageNotFound", "ImageUnreadable", "ImageUnreadable", "ImageUnreadable"]
    if policy == "error":
        assert [r["error"]["type"] for r in records[1:5]] == kinds
    elif policy == "skip":
        assert [r["skipped"]["reason"].split(":")[0] for r in records[1:5]] == kinds
    else:  # the default: the model reads no image, so none is opened and nothing is reported
        assert all("tokens" in r and "image_error" not in r for r in records), result.output


def test_skipped_line_matches_the_schema(schema_validator):
    skipped = {"id": "x", "line": 2, "skipped": {"reason": "ImageNotFound: image not found: nope.jpg"}}
    assert [e.message for e in schema_validator.iter_errors(skipped)] == []
    assert list(schema_validator.iter_errors({"id": "x", "line": 2, "skipped": {}}))  # a reason is required


# -- size ------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_100k_character_post_is_fully_tagged(tiny_text_only_ner, tmp_path, check):
    import random

    rng = random.Random(7)
    pieces = []
    while sum(len(p) + 1 for p in pieces) < 100_000:
        pieces.append(rng.choice(["Kawhi", "Leonard", "Constantinople", "supercalifragilistic", "🚀", "#NBA",
                                  "extraordinarily", "championship", "https://example.com/a/long/path?q=1"]))
    text = " ".join(pieces)[:100_000].rstrip()
    assert len(text) >= 99_990
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "long", "text": text}, {"id": "short", "text": "Obama"}])
    invoke("annotate", src, "-o", tmp_path / "out.jsonl", "-m", tiny_text_only_ner, "--num-workers", "0", expect=0)
    long, short = read_out(tmp_path / "out.jsonl", check)
    assert len(long["tokens"]) == len(long["bio"]) > 5_000
    covered = sum(t["end"] - t["start"] for t in long["tokens"])
    assert covered == sum(1 for ch in text if not ch.isspace())  # nothing dropped
    assert short["tokens"][0]["text"] == "Obama"


# -- order, determinism, chunks, workers -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def order_input(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("order")
    rows = make_posts(40)
    rows[11] = "{not json"
    rows[25] = {"id": "no-text"}
    return write_jsonl(d / "in.jsonl", rows)


@pytest.fixture(scope="module")
def reference_output(order_input, tiny_text_only_ner, tmp_path_factory) -> bytes:
    """The unsharded, uninterrupted output of order_input (-b 2: chunks of 2, 4, 8, 16 and 10 posts)."""
    out = tmp_path_factory.mktemp("reference") / "out.jsonl"
    result = invoke("annotate", order_input, "-o", out, "-m", tiny_text_only_ner, "-b", "2", "--num-workers", "0")
    assert result.exit_code == 3, result.output
    return out.read_bytes()


def test_reference_output_is_in_input_order(reference_output, check):
    records = check(parse_jsonl(reference_output))
    assert [r["line"] for r in records] == list(range(1, 41))
    ids = [r["id"] for r in records]
    assert ids[0] == "p0000" and ids[3] == 4 and ids[11] == 12 and ids[25] == "no-text"
    assert records[11]["error"]["type"] == "InvalidJSON" and records[25]["error"]["type"] == "InvalidInput"


@pytest.mark.parametrize("workers", ["0", "1", "2"])
def test_output_is_byte_identical_and_ordered_with_any_workers(workers, order_input, reference_output,
                                                                tiny_text_only_ner, tmp_path):
    out = tmp_path / "out.jsonl"
    result = invoke("annotate", order_input, "-o", out, "-m", tiny_text_only_ner, "-b", "2",
                    "--num-workers", workers)
    assert result.exit_code == 3, result.output
    assert out.read_bytes() == reference_output


def test_chunk_size_does_not_change_the_output(order_input, reference_output, tiny_text_only_ner, tmp_path):
    from mmib_cli.engines.local import run_pipeline
    from mmib_cli.runs import RunOptions

    out = tmp_path / "out.jsonl"
    summary = run_pipeline(RunOptions(task="annotate", input_path=str(order_input), output=str(out),
                                           model=str(tiny_text_only_ner), batch_size=3, chunk_size=3,
                                           num_workers=0, progress=False))
    assert int(summary.exit_code) == 3 and summary.posts == 40 and summary.errors == 2
    assert out.read_bytes() == reference_output


def _chunk_sizes(path: Path, **kwargs) -> list[int]:
    from mmib_cli.engines.local import _ChunkSource
    from mmib_cli.runs import ChunkRule, PrepareSettings, RunOptions

    settings = PrepareSettings(base_dir=path.parent, image_size=kwargs.pop("image_size", None))
    opts = RunOptions(task="annotate", input_path=str(path), output="-")
    return [len(chunk) for chunk, _ in _ChunkSource(opts, settings, ChunkRule(**kwargs))]  # (chunk, line digests)


def test_default_chunks_start_small_and_double(tmp_path):
    """The first batch reaches the model after one batch of posts is prepared, later chunks sort longer windows."""
    src = write_jsonl(tmp_path / "in.jsonl", make_posts(80))
    assert _chunk_sizes(src, size=32, first=2) == [2, 4, 8, 16, 32, 18]
    assert _chunk_sizes(src, size=32) == [32, 32, 16]


def test_chunks_close_early_on_photos_only_when_the_model_reads_them(tmp_path):
    rows = make_posts(40)
    for i, row in enumerate(rows):
        row["image"] = "p.jpg" if i < 20 else None  # 20 posts with a photo, then 20 without
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    assert _chunk_sizes(src, size=16, max_images=6, image_size=32) == [6, 6, 6, 16, 6]
    assert _chunk_sizes(src, size=16, max_images=6) == [16, 16, 8]  # text-only model: photos are not decoded


@pytest.mark.parametrize("workers", ["0", "2"])
def test_photo_capped_chunks_keep_order_with_workers(workers, tiny_bundle, images, tmp_path, check):
    rows = make_posts(30, seed=3)
    for i, row in enumerate(rows):
        row["image"] = str(images["red"]) if i % 3 else None
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = invoke("annotate", src, "-o", out, "-m", tiny_bundle, "-b", "2", "--num-workers", workers)
    assert result.exit_code == 0, result.output
    records = read_out(out, check)
    assert [r["line"] for r in records] == list(range(1, 31))
    assert [r["image_used"] for r in records] == [bool(i % 3) for i in range(30)]


def test_stdin_to_stdout(order_input, reference_output, tiny_text_only_ner):
    result = invoke("annotate", "-", "-o", "-", "-m", tiny_text_only_ner, "-b", "2",
                    input=order_input.read_bytes())
    assert result.exit_code == 3
    assert result.stdout_bytes == reference_output  # stdout carries the JSONL and nothing else
    assert "posts" in result.stderr  # the summary goes to stderr


def test_limit_stops_after_line_n(order_input, reference_output, tiny_text_only_ner, tmp_path):
    out = tmp_path / "out.jsonl"
    result = invoke("annotate", order_input, "-o", out, "-m", tiny_text_only_ner, "-b", "2", "--limit", "10",
                    "--num-workers", "0")
    assert result.exit_code == 0, result.output  # the bad lines 12 and 26 are past the limit
    assert out.read_bytes().splitlines() == reference_output.splitlines()[:10]


def test_shards_union_is_the_unsharded_output(order_input, reference_output, tiny_text_only_ner, tmp_path):
    lines: list[bytes] = []
    for index in (1, 2, 3):
        out = tmp_path / f"shard{index}.jsonl"
        invoke("annotate", order_input, "-o", out, "-m", tiny_text_only_ner, "-b", "2", "--shard", f"{index}/3",
               "--num-workers", "0", expect=0 if index == 1 else 3)  # bad lines 12 (shard 3) and 26 (shard 2)
        shard = out.read_bytes().splitlines()
        assert all((json.loads(x)["line"] - 1) % 3 == index - 1 for x in shard)
        lines.extend(shard)
    lines.sort(key=lambda x: json.loads(x)["line"])
    assert lines == reference_output.splitlines()


# -- output file handling --------------------------------------------------------------------------------------------
def test_existing_output_is_refused_without_force(order_input, reference_output, tiny_text_only_ner, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    result = invoke("annotate", order_input, "-o", out, "-m", tiny_text_only_ner)
    assert result.exit_code == 2
    assert "--force" in result.stderr and str(out) in result.stderr
    assert out.read_text() == "old\n"
    result = invoke("annotate", order_input, "-o", out, "-m", tiny_text_only_ner, "-b", "2", "--force",
                    "--num-workers", "0")
    assert result.exit_code == 3
    assert out.read_bytes() == reference_output
    assert not (tmp_path / "out.jsonl.partial").exists()


@pytest.mark.parametrize("where", ["missing-dir", "file-as-dir"])
def test_unwritable_output_is_fatal(where, order_input, tiny_text_only_ner, tmp_path):
    if where == "missing-dir":
        out = tmp_path / "no" / "such" / "dir" / "out.jsonl"
    else:
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out.jsonl"
    result = invoke("annotate", order_input, "-o", out, "-m", tiny_text_only_ner, "--num-workers", "0")
    assert result.exit_code == 1
    assert "Error:" in result.stderr and "out.jsonl" in result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()


def test_model_without_the_needed_part_fails_before_writing(order_input, tiny_text_only_ner, tmp_path):
    out = tmp_path / "out.jsonl"
    for args in (["annotate", "--relations"], ["relations", "--pair"]):
        result = invoke(*args, order_input, "-o", out, "-m", tiny_text_only_ner, "--num-workers", "0")
        assert result.exit_code == 1
        assert "relation (re) model" in result.stderr and "Traceback" not in result.output
        assert not out.exists() and not (tmp_path / "out.jsonl.partial").exists()


# -- resume ----------------------------------------------------------------------------------------------------------
def test_resume_repairs_a_cut_last_line(order_input, reference_output, tiny_text_only_ner, tmp_path):
    out = tmp_path / "out.jsonl"
    assert invoke("annotate", order_input, "-o", out, "-m", tiny_text_only_ner, "--num-workers", "0").exit_code == 3
    out.unlink()  # keep out.jsonl.run.json: what the "interrupted" run was made from
    lines = reference_output.splitlines(keepends=True)
    cut = b"".join(lines[:13]) + lines[13][: len(lines[13]) // 2]  # a kill in the middle of line 14
    (tmp_path / "out.jsonl.partial").write_bytes(cut)
    result = invoke("annotate", order_input, "-o", out, "-m", tiny_text_only_ner, "-b", "2", "--resume",
                    "--num-workers", "0")
    assert result.exit_code == 3, result.output
    assert out.read_bytes() == reference_output
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_resume_of_a_finished_output_changes_nothing(order_input, reference_output, tiny_text_only_ner, tmp_path):
    out = tmp_path / "out.jsonl"
    assert invoke("annotate", order_input, "-o", out, "-m", tiny_text_only_ner, "--num-workers", "0").exit_code == 3
    assert out.read_bytes() == reference_output
    result = invoke("annotate", order_input, "-o", out, "-m", tiny_text_only_ner, "--resume", "--num-workers", "0")
    assert result.exit_code == 3, result.output  # nothing left to do: exits as the run it finished (issue 25)
    assert out.read_bytes() == reference_output


def test_partial_left_over_needs_resume_or_force(order_input, tiny_text_only_ner, tmp_path):
    (tmp_path / "out.jsonl.partial").write_text('{"id": 1, "line": 1}\n')
    result = invoke("annotate", order_input, "-o", tmp_path / "out.jsonl", "-m", tiny_text_only_ner)
    assert result.exit_code == 2 and "--resume" in result.stderr


@pytest.mark.slow
def test_sigterm_then_resume_gives_the_uninterrupted_output(tiny_text_only_ner, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", make_posts(300, seed=3))
    reference = tmp_path / "reference.jsonl"
    result = invoke("annotate", src, "-o", reference, "-m", tiny_text_only_ner, "-b", "2", "--num-workers", "0")
    assert result.exit_code == 0, result.output

    out = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    cmd = [sys.executable, "-m", "mmib_cli", "annotate", str(src), "-o", str(out), "-m", str(tiny_text_only_ner),
           "-b", "2", "--num-workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if partial.exists() and partial.read_bytes().count(b"\n") >= 8:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr.decode()
    assert b"--resume" in stderr and b"Traceback" not in stderr
    assert not out.exists()
    kept = partial.read_bytes()
    assert kept.endswith(b"\n")
    kept_lines = [json.loads(x)["line"] for x in kept.splitlines()]
    assert kept_lines == list(range(1, len(kept_lines) + 1)) and 8 <= len(kept_lines) < 300

    result = invoke("annotate", src, "-o", out, "-m", tiny_text_only_ner, "-b", "2", "--resume",
                    "--num-workers", "0")
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == reference.read_bytes()  # no loss, no duplicates
    assert not partial.exists()


# -- input options ---------------------------------------------------------------------------------------------------
def test_field_name_options_and_image_root(tiny_bundle, images, tmp_path, check):
    root = images["red"].parent
    rows = [{"post_id": "a", "body": "Obama visits Berlin", "photo": images["red"].name, "text": "not this one"},
            {"post_id": 7, "body": "no photo"},
            {"id": "ignored", "body": "photo missing", "photo": "missing.jpg"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = invoke("annotate", src, "-o", tmp_path / "o.jsonl", "-m", tiny_bundle, "--num-workers", "0",
                    "--id-field", "post_id", "--text-field", "body", "--image-field", "photo",
                    "--image-root", root)
    assert result.exit_code == 0, result.output
    a, b, c = read_out(tmp_path / "o.jsonl", check)
    assert (a["id"], b["id"], c["id"]) == ("a", 7, 3)
    assert a["text"] == "Obama visits Berlin" and a["tokens"][0]["text"] == "Obama"
    assert a["image_used"] is True and b["image_used"] is False
    assert c["image_used"] is False and c["image_error"].startswith("ImageNotFound")
    assert str(root / "missing.jpg") in c["image_error"]


def test_relative_images_resolve_against_the_input_folder(tiny_bundle, images, tmp_path, check):
    import shutil

    (tmp_path / "pics").mkdir()
    shutil.copy(images["blue"], tmp_path / "pics" / "b.jpg")
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "blue", "image": "pics/b.jpg"}])
    result = invoke("annotate", src, "-o", tmp_path / "o.jsonl", "-m", tiny_bundle, "--num-workers", "0")
    assert result.exit_code == 0
    [rec] = read_out(tmp_path / "o.jsonl", check)
    assert rec["image_used"] is True and rec["image"] == "pics/b.jpg"




def test_an_annotation_that_is_not_strict_json_becomes_an_error_record(tiny_text_only_ner, tmp_path, monkeypatch,
                                                                       check):
    """A NaN produced after reading (a broken model's score) never aborts the run nor reaches the output."""
    import mmib_cli.annotation.flow as flow

    make_output = flow.make_output

    def nan_score(post, **kwargs):
        record = make_output(post, **kwargs)
        if post.id == "broken":
            record["score"] = float("nan")
        return record

    monkeypatch.setattr(flow, "make_output", nan_score)
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "ok", "text": "Obama"}, {"id": "broken", "text": "Obama"}])
    result = invoke("annotate", src, "-o", tmp_path / "out.jsonl", "-m", tiny_text_only_ner, "--num-workers", "0",
                    expect=3)
    ok, broken = read_out(tmp_path / "out.jsonl", check)
    assert "error" not in ok and broken["id"] == "broken" and broken["error"]["type"] == "UnserializableRecord"
    assert "1 errors" in result.stderr  # the summary counts what was written
