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
from click.testing import CliRunner

from mmib_cli.cli import cli

REPO = Path(__file__).resolve().parents[1]


# -- helpers ---------------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine two threads made each run ~5x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def invoke(*args, input: str | bytes | None = None):
    """Run `mmib ARGS` in-process; unexpected exceptions propagate (catch_exceptions=False).

    The network flags the command publishes to os.environ are restored afterwards (CliRunner's `env`).
    """
    env = {name: os.environ.get(name) for name in ("MMIB_OFFLINE", "HF_HUB_OFFLINE")}
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, env=env, catch_exceptions=False)


def write_jsonl(path: Path, rows) -> Path:
    """Write rows (dicts as JSON, strings verbatim) one per line."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def parse_jsonl(data: str | bytes) -> list[dict]:
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    assert text == "" or text.endswith("\n"), "output must end with a complete line"
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="session")
def check(check_records):
    return check_records


@pytest.fixture(scope="session")
def images(hard_images):
    return hard_images


def read_out(path: Path, check) -> list[dict]:
    return check(parse_jsonl(Path(path).read_bytes()))


VOCAB = ("Kawhi Leonard joins the Clippers in Los Angeles Obama visits Berlin with NASA and Apple tonight #NBA "
         "@warriors great game 🚀 Chelsea beat Arsenal at Stamford Bridge").split()


def make_posts(n: int, seed: int = 0) -> list[dict]:
    """n posts of 1..20 words (deterministic), some without id."""
    import random

    rng = random.Random(seed)
    posts = []
    for i in range(n):
        post = {"id": f"p{i:04d}", "text": " ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 20)))}
        if i % 7 == 3:
            del post["id"]
        posts.append(post)
    return posts


UNICODE_TEXT = ("Obama 👋🏾 visits Berlin 👨\u200d👩\u200d👧 مرحبا بالعالم \u200fשלום\u200e zero\u200bwidth "
                "cafe\u0301 नमस्ते 🇺🇸 𝕏 end")


# -- one run over every kind of bad input (each case asserted by its own test) ---------------------------------------
BAD_LINES = {
    "good-image": {"id": "good-image", "text": "Kawhi Leonard joins the Clippers", "image": "@red"},
    "malformed": '{"id": "malformed", "text": "unterminated',
    "not-object": '["a", "list", "not", "an", "object"]',
    "missing-text": {"id": "missing-text", "body": "no text field"},
    "number-text": {"id": "number-text", "text": 42},
    "empty-text": {"id": "empty-text", "text": ""},
    "unicode": {"id": "unicode", "text": UNICODE_TEXT},
    "missing-image": {"id": "missing-image", "text": "Picture of Berlin", "image": "does/not/exist.jpg"},
    "corrupt-image": {"id": "corrupt-image", "text": "Picture of Berlin", "image": "@corrupt"},
    "truncated-image": {"id": "truncated-image", "text": "Picture of Berlin", "image": "@truncated"},
    "text-file-image": {"id": "text-file-image", "text": "Picture of Berlin", "image": "@text"},
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
    """`mmib annotate` over BAD_LINES (plus a blank line) with the image-using tiny bundle."""
    d = tmp_path_factory.mktemp("bad-run")
    rows = _materialise(images, BAD_LINES)
    rows.insert(5, "")  # a blank line: skipped, but line numbers stay physical
    src = write_jsonl(d / "in.jsonl", rows)
    result = invoke("annotate", src, "-o", d / "out.jsonl", "-m", tiny_bundle, "--num-workers", "0")
    records = read_out(d / "out.jsonl", check)
    keys = [k for k in BAD_LINES]
    lines = [i + 1 for i, r in enumerate(rows) if r != ""]
    return {"result": result, "records": records, "by_key": dict(zip(keys, records)),
            "lines": dict(zip(keys, lines))}


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


def test_skipped_line_matches_the_schema(schema_validator):
    skipped = {"id": "x", "line": 2, "skipped": {"reason": "ImageNotFound: image not found: nope.jpg"}}
    assert [e.message for e in schema_validator.iter_errors(skipped)] == []
    assert list(schema_validator.iter_errors({"id": "x", "line": 2, "skipped": {}}))  # a reason is required


# -- size ------------------------------------------------------------------------------------------------------------
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
    start = time.process_time()  # CPU seconds: robust to a busy machine, still catches quadratic blow-ups
    result = invoke("annotate", src, "-o", tmp_path / "out.jsonl", "-m", tiny_text_only_ner, "--num-workers", "0")
    seconds = time.process_time() - start
    assert result.exit_code == 0, result.output
    long, short = read_out(tmp_path / "out.jsonl", check)
    assert len(long["tokens"]) == len(long["bio"]) > 5_000
    covered = sum(t["end"] - t["start"] for t in long["tokens"])
    assert covered == sum(1 for ch in text if not ch.isspace())  # nothing dropped
    assert short["tokens"][0]["text"] == "Obama"
    assert seconds < 60, f"a 100k-character post took {seconds:.0f} CPU seconds"


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
    """The unsharded, uninterrupted output of order_input (-b 2: chunks of 8 posts, so 5 chunks)."""
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
    from mmib_cli.pipeline import PipelineOptions, run_pipeline

    out = tmp_path / "out.jsonl"
    summary = run_pipeline(PipelineOptions(task="annotate", input_path=str(order_input), output=str(out),
                                           model=str(tiny_text_only_ner), batch_size=3, chunk_size=3,
                                           num_workers=0, progress=False))
    assert int(summary.exit_code) == 3 and summary.posts == 40 and summary.errors == 2
    assert out.read_bytes() == reference_output


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
        result = invoke("annotate", order_input, "-o", out, "-m", tiny_text_only_ner, "-b", "2",
                        "--shard", f"{index}/3", "--num-workers", "0")
        assert result.exit_code in (0, 3), result.output
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
    out.write_bytes(reference_output)
    result = invoke("annotate", order_input, "-o", out, "-m", tiny_text_only_ner, "--resume", "--num-workers", "0")
    assert result.exit_code == 0, result.output  # nothing left to do, no new error records
    assert out.read_bytes() == reference_output


def test_partial_left_over_needs_resume_or_force(order_input, tiny_text_only_ner, tmp_path):
    (tmp_path / "out.jsonl.partial").write_text('{"id": 1, "line": 1}\n')
    result = invoke("annotate", order_input, "-o", tmp_path / "out.jsonl", "-m", tiny_text_only_ner)
    assert result.exit_code == 2 and "--resume" in result.stderr


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("MMIB_OFFLINE", None)
    return env


def test_sigterm_then_resume_gives_the_uninterrupted_output(tiny_text_only_ner, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", make_posts(300, seed=3))
    reference = tmp_path / "reference.jsonl"
    result = invoke("annotate", src, "-o", reference, "-m", tiny_text_only_ner, "-b", "2", "--num-workers", "0")
    assert result.exit_code == 0, result.output

    out = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    cmd = [sys.executable, "-m", "mmib_cli", "annotate", str(src), "-o", str(out), "-m", str(tiny_text_only_ner),
           "-b", "2", "--num-workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_subprocess_env(), stdout=subprocess.PIPE,
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


# -- relations -------------------------------------------------------------------------------------------------------
PAIR_POSTS = make_posts(12, seed=11)


@pytest.fixture(scope="module")
def pair_input(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "in.jsonl", PAIR_POSTS)


def _run_relations(tiny_bundle, src: Path, out: Path, *extra: str, check) -> list[dict]:
    result = invoke("relations", src, "-o", out, "-m", tiny_bundle, "--num-workers", "0", *extra)
    assert result.exit_code in (0, 3), result.output
    return read_out(out, check)


ALL_PAIRS = ("--pair", "--keep-none", "--no-type-constraints")


@pytest.fixture(scope="module")
def all_pairs(tiny_bundle, pair_input, tmp_path_factory, check) -> list[dict]:
    """`relations --pair --keep-none --no-type-constraints`: every ordered pair of found entities, scored."""
    return _run_relations(tiny_bundle, pair_input, tmp_path_factory.mktemp("all-pairs") / "o.jsonl", *ALL_PAIRS,
                          check=check)


def test_relations_pair_every_ordered_pair_with_keep_none(all_pairs):
    records = all_pairs
    assert sum(len(r["entities"]) for r in records) > 0  # the random NER does find entities
    for rec in records:
        n = len(rec["entities"])
        assert len(rec["relations"]) == n * (n - 1)
        pairs = [(r["head"]["start"], r["tail"]["start"]) for r in rec["relations"]]
        assert len(set(pairs)) == len(pairs)
        spans = {(e["start"], e["end"]) for e in rec["entities"]}
        for rel in rec["relations"]:
            assert (rel["head"]["start"], rel["head"]["end"]) in spans
            assert (rel["tail"]["start"], rel["tail"]["end"]) in spans


def test_relations_type_constraints_and_none(tiny_bundle, pair_input, tmp_path, check):
    from mmib_cli.postprocess import RELATION_SIGNATURES

    records = _run_relations(tiny_bundle, pair_input, tmp_path / "a.jsonl", "--pair", "--keep-none", check=check)
    assert sum(len(r["relations"]) for r in records) > 0
    for rec in records:
        for rel in rec["relations"]:
            if rel["relation"] != "None":
                assert RELATION_SIGNATURES[rel["relation"]] == (rel["head"]["label"], rel["tail"]["label"])
    default = _run_relations(tiny_bundle, pair_input, tmp_path / "b.jsonl", "--pair", check=check)
    kept = [rel for rec in records for rel in rec["relations"] if rel["relation"] != "None"]
    assert [rel for rec in default for rel in rec["relations"]] == kept  # without --keep-none: None pairs dropped


def test_relations_min_score(all_pairs, tiny_bundle, pair_input, tmp_path, check):
    every = [rel for rec in all_pairs for rel in rec["relations"]]
    threshold = sorted(rel["score"] for rel in every)[len(every) // 2]
    scored = _run_relations(tiny_bundle, pair_input, tmp_path / "b.jsonl", *ALL_PAIRS, "--min-score",
                            str(threshold), check=check)
    assert [rel for rec in scored for rel in rec["relations"]] == [r for r in every if r["score"] >= threshold]
    assert 0 < sum(len(r["relations"]) for r in scored) < len(every)


def test_relations_of_given_pairs_and_mnre_spans(tiny_bundle, tmp_path, check):
    rows = [
        {"id": "pairs", "text": "Obama met Biden in Washington",
         "pairs": [{"head": {"start": 0, "end": 5, "label": "PER"}, "tail": {"start": 10, "end": 15, "label": "PER"}},
                   {"head": {"start": 0, "end": 5}, "tail": {"start": 19, "end": 29}}]},
        {"id": "mnre", "text": "Kawhi Leonard plays for the Raptors",
         "tokens": ["Kawhi", "Leonard", "plays", "for", "the", "Raptors"],
         "h": {"name": "Kawhi Leonard", "pos": [0, 2]}, "t": {"name": "Raptors", "pos": [5, 6]},
         "img_id": "twitter_19_31_1_1.jpg"},
        {"id": "outside", "text": "short",
         "pairs": [{"head": {"start": 0, "end": 5}, "tail": {"start": 3, "end": 99}}]},
        {"id": "bad-pos", "text": "Obama met Biden", "tokens": ["Obama", "met", "Biden"],
         "h": {"pos": ["a", 1]}, "t": {"pos": [2, 3]}},
        {"id": "bad-pair", "text": "Obama met Biden", "pairs": ["not a pair"]},
        {"id": "none", "text": "no pairs given"},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = invoke("relations", src, "-o", tmp_path / "o.jsonl", "-m", tiny_bundle, "--num-workers", "0",
                    "--keep-none")
    assert result.exit_code == 3, result.output
    pairs, mnre, outside, bad_pos, bad_pair, none = read_out(tmp_path / "o.jsonl", check)
    assert [(r["head"]["text"], r["tail"]["text"]) for r in pairs["relations"]] == [("Obama", "Biden"),
                                                                                   ("Obama", "Washington")]
    first = pairs["relations"][0]
    assert first["head"]["label"] == "PER" and first["tail"]["label"] == "PER"
    assert first["relation"] == "None" or first["relation"].startswith("/per/per/")
    [rel] = mnre["relations"]
    assert (rel["head"]["text"], rel["head"]["start"], rel["head"]["end"]) == ("Kawhi Leonard", 0, 13)
    assert (rel["tail"]["text"], rel["tail"]["start"], rel["tail"]["end"]) == ("Raptors", 28, 35)
    assert mnre["img_id"] == "twitter_19_31_1_1.jpg"  # other input fields pass through
    for rec in (outside, bad_pos, bad_pair):
        assert rec["error"]["type"] == "InvalidInput"
    assert none["relations"] == []


def test_relations_pair_uses_given_entities(tiny_bundle, tmp_path, check):
    text = "Obama met Merkel in Berlin"
    ents = [{"text": "Obama", "label": "PER", "start": 0, "end": 5, "score": 0.9},
            {"text": "Merkel", "label": "PER", "start": 10, "end": 16, "score": 0.8},
            {"text": "Berlin", "label": "LOC", "start": 20, "end": 26, "score": 0.7}]
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": text, "entities": ents}])
    [rec] = _run_relations(tiny_bundle, src, tmp_path / "o.jsonl", "--pair", "--keep-none", check=check)
    assert rec["entities"] == ents
    heads_tails = {(r["head"]["text"], r["tail"]["text"]) for r in rec["relations"]}
    # type constraints: LOC -> PER admits no relation, the other ordered pairs do
    assert heads_tails == {("Obama", "Merkel"), ("Obama", "Berlin"), ("Merkel", "Obama"), ("Merkel", "Berlin")}
    assert rec["relations"][0]["head"]["score"] == 0.9


def test_annotate_relations_flag(tiny_bundle, pair_input, tmp_path, check):
    result = invoke("annotate", pair_input, "-o", tmp_path / "o.jsonl", "-m", tiny_bundle, "--relations",
                    "--num-workers", "0")
    assert result.exit_code == 0, result.output
    records = read_out(tmp_path / "o.jsonl", check)
    assert all("relations" in r for r in records)
    assert sum(len(r["relations"]) for r in records) > 0
    result = invoke("annotate", pair_input, "-o", tmp_path / "p.jsonl", "-m", tiny_bundle, "--num-workers", "0")
    assert result.exit_code == 0, result.output
    plain = read_out(tmp_path / "p.jsonl", check)
    assert all("relations" not in r for r in plain)
    assert [r["entities"] for r in plain] == [r["entities"] for r in records]


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


# -- library API -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def annotator(tiny_bundle):
    from mmib_cli import Annotator

    return Annotator.from_pretrained(str(tiny_bundle), device="cpu")


def test_library_api_yields_dicts_lazily(annotator, images):
    import inspect

    consumed = []

    def records():
        for i, text in enumerate(["Kawhi Leonard joins the Clippers", "Obama in Berlin", "x", "y", "z"]):
            consumed.append(i)
            yield {"id": i, "text": text, "image": str(images["red"]) if i == 0 else None}

    stream = annotator.annotate(records(), relations=True, chunk_size=2)
    assert inspect.isgenerator(stream) and consumed == []
    first = next(stream)
    assert consumed == [0, 1]  # one chunk read, not the whole input
    assert isinstance(first, dict) and first["id"] == 0 and first["image_used"] is True
    assert "relations" in first and first["model"].startswith("bundle@")
    rest = list(stream)
    assert [r["id"] for r in rest] == [1, 2, 3, 4]


def test_library_api_error_records_and_single_post(annotator):
    out = list(annotator.annotate([{"text": 5}, "not a dict", {"text": "ok"}]))
    assert [r.get("error", {}).get("type") for r in out] == ["InvalidInput", "InvalidInput", None]
    one = annotator.annotate_text("Obama visits Berlin")
    assert [t["text"] for t in one["tokens"]] == ["Obama", "visits", "Berlin"] and one["line"] == 1


def test_library_relations_default_to_the_given_pairs(annotator):
    post = {"text": "Obama met Biden", "tokens": ["Obama", "met", "Biden"], "h": {"pos": [0, 1]},
            "t": {"pos": [2, 3]}}
    from mmib_cli.annotate import RelationSettings

    [rec] = list(annotator.relations([post], relation_settings=RelationSettings(pair=False, keep_none=True)))
    assert [(r["head"]["text"], r["tail"]["text"]) for r in rec["relations"]] == [("Obama", "Biden")]
    [default] = list(annotator.relations([post]))  # default: classify the pairs the input gives
    assert all((r["head"]["text"], r["tail"]["text"]) == ("Obama", "Biden") for r in default["relations"])


def test_one_failing_post_does_not_lose_its_chunk(annotator, monkeypatch):
    """A model-stage exception caused by one post becomes that post's error record; the others are annotated."""
    import mmib_cli.annotate as annotate_module

    real = annotate_module.predict_ner

    def flaky(loaded, windows, **kwargs):
        if any(len(ws[0].word_index) == 4 for ws in windows):  # the 4-word post breaks the model
            raise RuntimeError("boom")
        return real(loaded, windows, **kwargs)

    monkeypatch.setattr(annotate_module, "predict_ner", flaky)
    out = list(annotator.annotate([{"text": "one"}, {"text": "a b c d"}, {"text": "two words"}]))
    assert out[0]["tokens"][0]["text"] == "one" and out[2]["bio"] and len(out[2]["bio"]) == 2
    assert out[1]["error"]["type"] == "AnnotationFailed" and "boom" in out[1]["error"]["message"]


def test_odd_image_paths_never_stop_a_run(annotator):
    out = list(annotator.annotate([{"text": "hi", "image": "~no_such_user_xyz/p.jpg"},
                                   {"text": "hi", "image": "a\x00b.jpg"},
                                   {"text": "hi", "image": "https://example.com/p.jpg"}]))
    assert [r["image_used"] for r in out] == [False, False, False]
    assert out[2]["image_error"].startswith("ImageNotFound")
