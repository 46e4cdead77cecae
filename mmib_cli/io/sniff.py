"""Look at the start of an input before anything slow loads (torch-free).

A JSON array, a pretty-printed JSON document, CSV/TSV, plain text, or JSONL whose first records all lack the text
field would each give one error record per line after the model has loaded. `sniff_input` reads the first
`SNIFF_BYTES` of a regular file (decompressed) and raises a `UsageError` that says what it saw and the command that
fixes it. Individual bad lines in a file whose start is good JSONL are not its business: they stay error records.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shlex
import stat
from dataclasses import dataclass
from typing import Any, Callable

from mmib_cli.errors import UsageError
from mmib_cli.io.jsonl import open_input, read_lines
from mmib_cli.io.records import SkippedRecord

__all__ = ["LIKELY_TEXT_FIELDS", "SNIFF_BYTES", "SNIFF_RECORDS", "InputSample", "count_lines", "sample_input",
           "sniff_input"]

SNIFF_BYTES = 64 * 1024
"""How much of the (decompressed) input is looked at."""
SNIFF_RECORDS = 20
"""How many non-blank lines at most are looked at."""
LIKELY_TEXT_FIELDS = ("content", "full_text", "body", "message", "text", "tweet", "caption", "post", "sentence",
                      "description", "title")
"""Keys that usually hold a post's text, in the order `--text-field` suggestions name them."""
_DELIMITERS = ",\t;|"
_EXCERPT = 70


@dataclass
class InputSample:
    """The first non-blank lines of an input and what `read_lines` makes of them."""

    lines: list[str]  # raw text of the non-blank lines looked at
    items: list[Any]  # their parsed items: dicts or ErrorRecords
    complete: bool  # whether the whole input fitted in the sample


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def sample_input(path: str, *, max_bytes: int = SNIFF_BYTES, max_records: int = SNIFF_RECORDS) -> InputSample | None:
    """The first non-blank lines of a regular file (decompressed), or None for stdin, pipes and unreadable files.

    Only complete lines are kept (a line cut by `max_bytes` is left out, unless the input ends there).
    """
    if path == "-" or "://" in path or not _is_regular(path):
        return None
    try:
        with open_input(path) as stream:
            head = stream.read(max_bytes + 1)
    except Exception:  # noqa: BLE001 - unreadable or corrupt: the run itself reports it, line numbers and all
        return None
    if isinstance(head, str):
        head = head.encode("utf-8")
    complete = len(head) <= max_bytes
    if not complete:
        cut = head.rfind(b"\n", 0, max_bytes) + 1
        if not cut:  # one line longer than the sample: only its start can be judged (a JSON array on one line)
            return InputSample([head[:max_bytes].decode("utf-8", errors="replace").lstrip("\ufeff")], [None], False)
        head = head[:cut]
    lines: list[str] = []
    items: list[Any] = []
    raw_lines = [line.decode("utf-8", errors="replace") for line in head.removeprefix(b"\xef\xbb\xbf").split(b"\n")]
    for raw, (_, item) in zip(raw_lines, read_lines(io.BytesIO(head))):
        if isinstance(item, SkippedRecord):
            continue
        lines.append(raw)
        items.append(item)
        if len(items) >= max_records:
            complete = False
            break
    return InputSample(lines, items, complete)


def _excerpt(line: str) -> str:
    line = line.strip()
    return repr(line if len(line) <= _EXCERPT else line[: _EXCERPT - 3] + "...")


def _name(path: str) -> str:
    return shlex.quote(path)


def _stem(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".gz", ".bz2", ".xz", ".json", ".jsonl", ".csv", ".tsv", ".txt"):
        base = base.removesuffix(suffix)
    return shlex.quote(os.path.join(os.path.dirname(path), (base or "posts") + ".jsonl"))


def _csv_dialect(lines: list[str]) -> tuple[str, list[str]] | None:
    """(delimiter, header) when the lines read as a table of at least two columns with the same width throughout."""
    for delimiter in _DELIMITERS:
        if delimiter not in lines[0]:
            continue
        rows = list(csv.reader(lines, delimiter=delimiter))
        width = len(rows[0])
        if width >= 2 and all(len(row) == width for row in rows[1:]):
            return delimiter, [cell.strip() for cell in rows[0]]
    return None


def _likely_text_fields(records: list[dict[str, Any]], text_field: str) -> list[str]:
    """Keys of the records that hold strings, the usual text keys first."""
    keys: dict[str, int] = {}
    for record in records:
        for key, value in record.items():
            if isinstance(value, str) and key != text_field:
                keys[key] = max(keys.get(key, 0), len(value))
    usual = [key for key in LIKELY_TEXT_FIELDS if key in keys]
    if usual:
        return usual
    return sorted(keys, key=lambda key: -keys[key])[:3]  # the longest strings are the likeliest text


def sniff_input(path: str, *, text_field: str = "text", option: str = "--text-field") -> None:
    """Refuse an input whose start shows it is not JSONL posts with `text_field`, before anything slow loads.

    Looks only at regular files (stdin and pipes are read once, by the run). Blank lines are ignored.

    Raises:
        UsageError: the input starts like a JSON array, a pretty-printed JSON document, CSV/TSV or plain text, or
            none of its first records (all JSON objects) has `text_field`; the message says what was seen and the
            command or option that fixes it.
    """
    sample = sample_input(path)
    if sample is None or not sample.lines:
        return
    first = sample.lines[0].strip()
    parsed = [item for item in sample.items if isinstance(item, dict)]
    where = f"input {path}"
    if first.startswith("[") and not parsed:
        raise UsageError(f"{where} looks like a JSON array (it starts with {_excerpt(first)}), not JSONL (one JSON "
                         f"object per line); convert it first: jq -c '.[]' {_name(path)} > {_stem(path)}")
    if not parsed and len(sample.lines) >= 2:
        if first.startswith("{"):
            raise UsageError(f"{where} looks like one JSON document spread over several lines (it starts with "
                             f"{_excerpt(first)}), not JSONL (one JSON object per line); convert it first: jq -c . "
                             f"{_name(path)} > {_stem(path)} (or jq -c '.posts[]' ... when the posts are a list "
                             "inside it)")
        table = _csv_dialect(sample.lines)
        if table is not None:
            delimiter, header = table
            kind = "TSV" if delimiter == "\t" else "CSV"
            columns = ", ".join(header[:8]) + (", ..." if len(header) > 8 else "")
            dialect = "" if delimiter == "," else f", delimiter=chr({ord(delimiter)})"
            hint = "" if text_field in header else (f"; its columns have no {text_field!r}: after converting, pass "
                                                    f"{option} with the column that holds the text")
            raise UsageError(
                f"{where} looks like {kind} (columns: {columns}), not JSONL (one JSON object per line); convert it "
                f"first: python3 -c 'import csv, json, sys; [print(json.dumps(row, ensure_ascii=False)) for row in "
                f"csv.DictReader(sys.stdin{dialect})]' < {_name(path)} > {_stem(path)}{hint}")
        raise UsageError(f"{where} is not JSONL: none of its first {len(sample.lines)} lines is a JSON object "
                         f"(line 1: {_excerpt(first)}); for one post per line of plain text, convert it first: "
                         f"jq -R -c '{{{json.dumps(text_field)}: .}}' {_name(path)} > {_stem(path)}")
    if parsed and 2 * len(parsed) >= len(sample.items) and not any(text_field in record for record in parsed):
        keys = list(dict.fromkeys(key for record in parsed for key in record))
        shown = ", ".join(map(repr, keys[:10])) + (", ..." if len(keys) > 10 else "")
        candidates = _likely_text_fields(parsed, text_field)
        fix = (f"pass {option} {candidates[0]}" if len(candidates) == 1 else
               "pass " + " or ".join(f"{option} {key}" for key in candidates) if candidates else
               f"give each record a {text_field!r} string")
        count = "the only record" if len(parsed) == 1 else f"the first {len(parsed)} records"
        raise UsageError(f"{where}: {count} {'has' if len(parsed) == 1 else 'have'} no {text_field!r} field (keys: "
                         f"{shown}); {fix}")


MAX_COUNTED_COMPRESSED_BYTES = 64 * 1024 * 1024
"""A compressed input larger than this gets no progress total: counting its lines would decompress it a second time
alongside the run."""


def count_lines(path: str, *, block: int = 1 << 20) -> int | None:
    """Physical lines of a regular file (decompressed), as `read_lines` numbers them; None for stdin, pipes and
    compressed files larger than `MAX_COUNTED_COMPRESSED_BYTES`.

    Meant for a progress total: reads the file once in `block`-sized pieces (run it in a background thread).
    """
    if path == "-" or "://" in path or not _is_regular(path):
        return None
    if os.path.getsize(path) > MAX_COUNTED_COMPRESSED_BYTES:
        with open(path, "rb") as raw:
            magic = raw.read(6)
        if magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")):
            return None
    lines = 0
    last = b"\n"
    with open_input(path) as stream:
        while True:
            data = stream.read(block)
            if not data:
                break
            if isinstance(data, str):
                data = data.encode("utf-8")
            lines += data.count(b"\n")
            last = data[-1:]
    return lines + (last != b"\n")


def file_lines_total(path: str, limit: int | None = None) -> Callable[[], int | None]:
    """A `Progress` total: the lines of a regular file (up to `limit`), counted when called; None for stdin/pipes."""

    def total() -> int | None:
        lines = count_lines(path)
        return None if lines is None else min(lines, limit) if limit is not None else lines

    return total
