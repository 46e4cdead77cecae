"""Issue 25, point 3: `--resume` keeps a record only when it proves the record answers the current input's line."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cli_helpers import invoke, make_posts

from mmib_cli.io.jsonl import read_lines_traced
from mmib_cli.io.writer import lines_path, partial_path
from mmib_cli.engines.local import run_pipeline
from mmib_cli.runs import RunOptions


def _opts(src: Path, out: Path, model: Path, **changes) -> RunOptions:
    values = dict(task="annotate", input_path=str(src), output=str(out), model=str(model), num_workers=0,
                  chunk_size=2, progress=False, online=False)
    return RunOptions(**{**values, **changes})


def _lines(rows) -> list[bytes]:
    return [(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)).encode() + b"\n" for r in rows]


def _annotate(src: Path, out: Path, model: Path, *extra) -> tuple[int, str]:
    result = invoke("annotate", src, "-o", out, "-m", model, "--num-workers", "0", *extra)
    return result.exit_code, result.stderr


def _interrupt(src: Path, out: Path, model: Path, lines: int) -> None:
    """A run that stopped after `lines` lines: a finished `--limit` run turned into a partial output."""
    run_pipeline(_opts(src, out, model, limit=lines))
    os.replace(out, partial_path(out))


def _reference(src_lines: list[bytes], model: Path, tmp_path: Path) -> tuple[int, bytes]:
    src = tmp_path / "reference-in.jsonl"
    src.write_bytes(b"".join(src_lines))
    out = tmp_path / "reference-out.jsonl"
    code, _ = _annotate(src, out, model)
    return code, out.read_bytes()


def test_the_reader_gives_each_line_its_digest_and_none_to_an_unterminated_last_line(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"id": 1}\n\n{"id": 2')
    marks = [(line, digest) for line, _, digest in read_lines_traced(str(src))]
    assert [line for line, _ in marks] == [1, 2, 3]
    assert marks[0][1] and marks[1][1] and marks[0][1] != marks[1][1] and marks[2][1] is None


@pytest.mark.parametrize("change", ["rewritten", "removed", "inserted"])
def test_lines_read_then_changed_are_never_kept(tiny_text_only_ner, tmp_path, change):
    rows = _lines(make_posts(12, seed=11))
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"".join(rows))
    _interrupt(src, out, tiny_text_only_ner, 10)  # the run had read lines that were appended while it ran
    kept = partial_path(out).read_bytes()
    if change == "rewritten":  # the producer rewrote its last lines (same length, other ids)
        rows[8] = rows[8].replace(b'"p0008"', b'"q0008"')
    elif change == "removed":
        rows = rows[:7]
    else:
        rows.insert(3, _lines([{"id": "new", "text": "an inserted post"}])[0])
    src.write_bytes(b"".join(rows))
    code, stderr = _annotate(src, out, tiny_text_only_ner, "--resume")
    assert code == 2 and "cannot resume" in stderr and "--force" in stderr, stderr
    assert not out.exists() and partial_path(out).read_bytes().startswith(kept[: kept.index(b"\n") + 1])


def test_a_cut_last_line_is_redone_once_complete(tiny_text_only_ner, tmp_path):
    rows = _lines(make_posts(5, seed=2)) + [b'{"id":"k10","text":"Angela Merkel visits Paris"}\n']
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"".join(rows)[:-20])  # a producer is still writing the last line
    code, _ = _annotate(src, out, tiny_text_only_ner)
    assert code == 3 and json.loads(out.read_bytes().splitlines()[-1])["error"]["type"] == "InvalidJSON"
    src.write_bytes(b"".join(rows))  # the line is complete now
    code, stderr = _annotate(src, out, tiny_text_only_ner, "--resume")
    assert (code, out.read_bytes()) == _reference(rows, tiny_text_only_ner, tmp_path), stderr
    assert code == 0


def test_a_valid_unterminated_last_line_is_annotated_and_resume_redoes_it(tiny_text_only_ner, tmp_path):
    rows = _lines(make_posts(4, seed=9))
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"".join(rows)[:-1])  # an editor that writes no final newline
    code, _ = _annotate(src, out, tiny_text_only_ner)
    assert code == 0 and len(out.read_bytes().splitlines()) == 4
    extra = _lines([{"id": "more", "text": "Obama visits Berlin"}])
    src.write_bytes(b"".join(rows + extra))
    code, _ = _annotate(src, out, tiny_text_only_ner, "--resume")
    assert (code, out.read_bytes()) == _reference(rows + extra, tiny_text_only_ner, tmp_path)


@pytest.mark.parametrize("damage, needle", [
    ("duplicate", "twice"),
    ("out-of-order", "after line"),
    ("line-999", "line 999"),
    ("sidecar-mismatch", "do not belong together"),
])
def test_an_inconsistent_partial_is_refused(tiny_text_only_ner, tmp_path, damage, needle):
    rows = _lines(make_posts(12, seed=4))
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"".join(rows))
    _interrupt(src, out, tiny_text_only_ner, 6)
    partial, sidecar = partial_path(out), lines_path(out)
    records, entries = partial.read_bytes().splitlines(keepends=True), sidecar.read_bytes().splitlines(keepends=True)
    if damage == "duplicate":
        records.append(records[-1])
        entries.append(entries[-1])
    elif damage == "out-of-order":
        records[2], records[3] = records[3], records[2]
        entries[2], entries[3] = entries[3], entries[2]
    elif damage == "line-999":
        records.append(records[-1].replace(b'"line":6', b'"line":999'))
        entries.append(b"999 " + entries[-1].split(b" ")[1])
    else:
        entries[1] = b"7 " + entries[1].split(b" ")[1]
    partial.write_bytes(b"".join(records))
    sidecar.write_bytes(b"".join(entries))
    code, stderr = _annotate(src, out, tiny_text_only_ner, "--resume")
    assert code == 2 and "cannot resume" in stderr and needle in stderr, stderr
    assert partial.read_bytes() == b"".join(records) and not out.exists()


def test_a_missing_line_digest_file_is_refused(tiny_text_only_ner, tmp_path):
    rows = _lines(make_posts(6, seed=4))
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"".join(rows))
    _interrupt(src, out, tiny_text_only_ner, 3)
    lines_path(out).unlink()
    code, stderr = _annotate(src, out, tiny_text_only_ner, "--resume")
    assert code == 2 and "run.lines is missing" in stderr


def test_records_past_their_digests_are_made_again(tiny_text_only_ner, tmp_path):
    rows = _lines(make_posts(8, seed=6))
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"".join(rows))
    _interrupt(src, out, tiny_text_only_ner, 6)
    sidecar = lines_path(out)
    sidecar.write_bytes(b"".join(sidecar.read_bytes().splitlines(keepends=True)[:4]))  # killed between the writes
    code, _ = _annotate(src, out, tiny_text_only_ner, "--resume")
    assert (code, out.read_bytes()) == _reference(rows, tiny_text_only_ner, tmp_path)


@pytest.mark.parametrize("stop", [3, 8])
def test_a_resumed_run_exits_as_the_uninterrupted_run(tiny_text_only_ner, tmp_path, stop):
    rows = _lines(make_posts(8, seed=1))
    rows[1] = b'{"id": "bad", "text": \n'  # an error record, kept by the interrupted run
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"".join(rows))
    expected = _reference(rows, tiny_text_only_ner, tmp_path)
    assert expected[0] == 3
    _interrupt(src, out, tiny_text_only_ner, stop)  # stop=8: the whole input, so the resume does nothing
    code, stderr = _annotate(src, out, tiny_text_only_ner, "--resume")
    assert (code, out.read_bytes()) == expected, stderr
    assert "1 of them error records" in stderr
    code, _ = _annotate(src, out, tiny_text_only_ner, "--resume")  # a no-op resume of the finished output
    assert code == 3 and out.read_bytes() == expected[1]


def test_resume_with_worker_processes_refuses_a_changed_line_cleanly(tiny_text_only_ner, tmp_path):
    rows = _lines(make_posts(10, seed=8))
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"".join(rows))
    _interrupt(src, out, tiny_text_only_ner, 6)
    rows[2] = rows[2].replace(b'"p0002"', b'"z0002"')
    src.write_bytes(b"".join(rows))
    result = invoke("annotate", src, "-o", out, "-m", tiny_text_only_ner, "--num-workers", "2", "--resume")
    assert result.exit_code == 2 and "input line 3 is not the line" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "DataLoader" not in result.stderr


