"""`--shard I/N`: a deterministic partition by line number whose N shard outputs add up to the unsharded output."""
from __future__ import annotations

import json

import pytest

from cli_helpers import invoke

POSTS = [
    json.dumps({"id": "a", "text": "Kawhi Leonard visits New York"}),
    json.dumps({"id": "b", "text": "The Raptors play in Toronto tonight"}),
    "{not json",
    "",  # a blank line: a `skipped` record, so line numbers and the union still hold
    json.dumps({"id": "e", "text": 5}),
    json.dumps({"text": "Obama and Biden at lunch"}),
    json.dumps({"id": 7, "text": "@warriors win again #NBA"}),
    json.dumps({"id": "h", "text": "St. Louis loves Obama", "extra": [1, {"k": None}]}),
]


@pytest.fixture()
def posts_file(tmp_path):
    path = tmp_path / "posts.jsonl"
    path.write_text("\n".join(POSTS) + "\n", encoding="utf-8")
    return path


def _annotate(args: list[str], model) -> tuple[int, list[bytes]]:
    result = invoke("annotate", *args, "--model", model, "--num-workers", "0", "--no-progress")
    return result.exit_code, result.stdout_bytes.splitlines(keepends=True)


def _line(raw: bytes) -> int:
    return json.loads(raw)["line"]


@pytest.mark.parametrize("total", [2, 3])
def test_union_of_shards_is_the_unsharded_output(posts_file, tiny_text_only_ner, total):
    code, full = _annotate([str(posts_file), "-o", "-"], tiny_text_only_ner)
    assert code == 3  # the malformed line and the bad record are error records
    assert [_line(r) for r in full] == [1, 2, 3, 4, 5, 6, 7, 8]
    union: list[bytes] = []
    for index in range(1, total + 1):
        code, part = _annotate([str(posts_file), "-o", "-", "--shard", f"{index}/{total}"], tiny_text_only_ner)
        lines = [_line(r) for r in part]
        assert lines == sorted(lines)  # each shard keeps input order
        assert all((line - 1) % total == index - 1 for line in lines)
        errors = sum("error" in json.loads(r) for r in part)
        assert code == (3 if errors else 0)
        union.extend(part)
    assert sorted(union, key=_line) == full  # byte-identical lines, each exactly once


def test_shard_to_file_matches_stdout(posts_file, tiny_text_only_ner, tmp_path):
    out = tmp_path / "shard.jsonl"
    code, _ = _annotate([str(posts_file), "-o", str(out), "--shard", "2/2"], tiny_text_only_ner)
    assert code == 0  # lines 2, 4 (blank: skipped), 6, 8: no error record in this shard
    assert [_line(r) for r in out.read_bytes().splitlines()] == [2, 4, 6, 8]


@pytest.mark.parametrize("value", ["0/2", "3/2", "1", "a/b", "1/0"])
def test_bad_shard_is_a_usage_error(posts_file, tiny_text_only_ner, value):
    result = invoke("annotate", posts_file, "-o", "-", "--model", tiny_text_only_ner, "--shard", value, expect=2)
    assert "--shard" in result.stderr
