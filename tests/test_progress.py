"""Progress (issue 26, point 1): a total and an ETA whenever the input is a regular file, counted without holding
back the first record, log lines every few seconds when stderr is not a terminal, and the same for eval, train,
report and export."""
from __future__ import annotations

import gzip
import logging
import time

import pytest

from cli_helpers import invoke, write_jsonl
from mmib_cli.console import Progress
from mmib_cli.io.sniff import file_lines_total
from mmib_cli.io.sniff import count_lines
from mmib_cli.runs import RunOptions


def test_count_lines_counts_physical_lines_of_plain_and_compressed_files(tmp_path):
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(b'{"text": "a"}\n\n{"text": "b"}\n{"text": "c"}')  # blank line, no final newline
    assert count_lines(str(plain)) == 4
    packed = tmp_path / "a.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes() + b"\n"))
    assert count_lines(str(packed)) == 4
    (tmp_path / "empty").write_bytes(b"")
    assert count_lines(str(tmp_path / "empty")) == 0
    assert count_lines("-") is None


@pytest.mark.parametrize("limit, shard, done, expected", [
    (None, None, (), 10), (4, None, (), 4), (None, (2, 3), (), 3), (None, (1, 3), (), 4),
    (None, None, (1, 2, 3), 7), (8, (1, 2), (1, 3, 9), 2),
])
def test_the_run_total_follows_limit_shard_and_resume(tmp_path, limit, shard, done, expected):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": f"post {i}"} for i in range(10)])
    opts = RunOptions(task="annotate", input_path=str(src), output=str(tmp_path / "o.jsonl"), limit=limit,
                      shard=shard)
    assert opts.progress_total(done)() == expected
    assert expected == sum(1 for _ in opts.select(((n, None) for n in range(1, 11)), done))


def test_non_tty_progress_logs_total_rate_and_eta_every_interval(caplog):
    caplog.set_level(logging.INFO, logger="mmib_cli.progress")
    with Progress("mmib annotate", total=lambda: 100, interval=0.05) as progress:
        progress.advance(25)
        deadline = time.monotonic() + 5
        while not any("/100" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.02)
    lines = [r.getMessage() for r in caplog.records]
    assert any("mmib annotate: 25/100 posts (25%)" in line and "posts/s" in line and "ETA" in line
               for line in lines), lines


def test_a_slow_total_does_not_hold_back_the_work():
    started = time.monotonic()

    def slow() -> int:
        time.sleep(0.5)
        return 10

    with Progress("x", total=slow) as progress:
        entered = time.monotonic() - started
        progress.advance()
    assert entered < 0.5  # the count runs in a background thread
    assert progress.count == 1


def test_disabled_progress_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger="mmib_cli.progress")
    with Progress("x", total=3, enabled=False, interval=0.01) as progress:
        progress.advance(2)
        time.sleep(0.05)
    assert not caplog.records


def test_file_lines_total_applies_the_limit(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}] * 7)
    assert file_lines_total(str(src))() == 7 and file_lines_total(str(src), 3)() == 3


def test_the_annotate_progress_knows_its_total(tmp_path, tiny_text_only_ner, monkeypatch):
    from mmib_cli import console

    seen: list[Progress] = []
    real_enter = console.Progress.__enter__

    def spy(self):
        seen.append(self)
        return real_enter(self)

    monkeypatch.setattr(console.Progress, "__enter__", spy)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": f"Obama visits Berlin {i}"} for i in range(6)])
    invoke("annotate", src, "-o", tmp_path / "o.jsonl", "-m", tiny_text_only_ner, "--limit", "5", expect=0)
    [progress] = [p for p in seen if p.description == "mmib annotate"]
    for thread in progress._threads:
        thread.join(5)
    assert progress.total == 5 and progress.count == 5


def test_report_and_export_count_their_lines(tmp_path, monkeypatch):
    from mmib_cli import console

    seen: list[Progress] = []
    real_enter = console.Progress.__enter__

    def spy(self):
        seen.append(self)
        return real_enter(self)

    monkeypatch.setattr(console.Progress, "__enter__", spy)
    records = [{"id": i, "line": i, "text": "Obama", "tokens": [{"text": "Obama", "start": 0, "end": 5}],
                "bio": ["B-PER"], "entities": [{"text": "Obama", "label": "PER", "start": 0, "end": 5,
                                                "score": 0.9}], "model": "m@1"} for i in range(1, 4)]
    out = write_jsonl(tmp_path / "out.jsonl", records)
    invoke("report", out, "-o", tmp_path / "r.html", expect=0)
    invoke("export", out, "-o", tmp_path / "t.json", expect=0)
    for progress in seen:
        for thread in progress._threads:
            thread.join(5)
    by_name = {p.description: p for p in seen}
    assert by_name["mmib report: reading"].total == 3 and by_name["mmib report: reading"].count == 3
    assert by_name["mmib export: label-studio"].total == 3 and by_name["mmib export: label-studio"].count == 3


def test_a_large_compressed_input_is_not_decompressed_twice(tmp_path, monkeypatch):
    from mmib_cli.io import sniff

    packed = tmp_path / "a.jsonl.gz"
    packed.write_bytes(gzip.compress(b'{"text": "a"}\n' * 100))
    assert count_lines(str(packed)) == 100
    monkeypatch.setattr(sniff, "MAX_COUNTED_COMPRESSED_BYTES", 10)
    assert count_lines(str(packed)) is None
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(b'{"text": "a"}\n' * 100)
    assert count_lines(str(plain)) == 100  # plain files are always counted
