"""Streaming JSONL input (line-numbered, bad lines become error records) and the encoding of output lines.

Output lines are compact JSON (``ensure_ascii=False``, keys in insertion order), one per record; the atomic,
resumable, locked output file is `mmib_cli.io.writer.AtomicJSONLWriter`.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Union

import jsonlines

from mmib_cli.io.records import ErrorRecord

__all__ = ["DEFAULT_MAX_LINE_BYTES", "dumps_line", "read_lines"]

DEFAULT_MAX_LINE_BYTES = 32 * 1024 * 1024
"""Longest input line read into memory (bytes); longer lines become ``InvalidInput`` error records."""

_CHUNK = 1 << 20
_EXCERPT = 60

Source = Union[Path, str, IO[bytes], IO[str]]


def _excerpt(line: bytes | str) -> str:
    text = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line
    text = text.strip()
    return repr(text if len(text) <= _EXCERPT else text[: _EXCERPT - 3] + "...")


def _physical_lines(stream: IO[Any], max_bytes: int | None) -> Iterator[tuple[int, bytes | str | None]]:
    """Yield ``(line_number, line)`` for every physical line; ``None`` for a line longer than ``max_bytes``.

    An over-long line is skipped in chunks, so memory stays bounded by ``max_bytes``.
    """
    number = 0
    while True:
        line = stream.readline() if max_bytes is None else stream.readline(max_bytes + 1)
        if not line:
            return
        number += 1
        newline = b"\n" if isinstance(line, bytes) else "\n"
        if max_bytes is not None and len(line) > max_bytes and not line.endswith(newline):
            while True:  # discard the rest of the over-long line
                rest = stream.readline(_CHUNK)
                if not rest or rest.endswith(newline):
                    break
            yield number, None
            continue
        yield number, line


def _open_source(source: Source) -> tuple[IO[Any], bool]:
    """Return ``(stream, owned)``; ``owned`` streams are closed by the reader."""
    if isinstance(source, (str, os.PathLike)):
        if str(source) == "-":
            return getattr(sys.stdin, "buffer", sys.stdin), False
        return open(source, "rb"), True  # noqa: SIM115 - closed by read_lines
    return source, False


def read_lines(
    source: Source,
    *,
    max_line_bytes: int | None = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[tuple[int, dict[str, Any] | ErrorRecord]]:
    """Stream a JSONL file as ``(line_number, object)`` pairs; bad lines become ``ErrorRecord``s, never exceptions.

    Blank lines are skipped, but numbers are always physical 1-based line numbers. A UTF-8 BOM is ignored.
    Memory is bounded by the longest accepted line.

    Args:
        source: a path, ``"-"`` for stdin, or an open (binary or text) stream, which is left open.
        max_line_bytes: longest line read; a longer one becomes an ``InvalidInput`` error record (None: no limit).

    Yields:
        ``(line, dict)`` for each JSON object; ``(line, ErrorRecord)`` with type ``InvalidJSON`` for malformed JSON
        or invalid UTF-8, ``InvalidInput`` for a JSON value that is not an object or a line that is too long.

    Raises:
        OSError: the source path cannot be opened (raised on the first ``next``).
    """
    stream, owned = _open_source(source)
    try:
        for number, line in _physical_lines(stream, max_line_bytes):
            if line is None:
                yield number, ErrorRecord(
                    number, number, "InvalidInput", f"line {number}: longer than {max_line_bytes} bytes; skipped"
                )
                continue
            if not line.strip():
                continue
            try:
                value = jsonlines.Reader((line,)).read(allow_none=True)
            except jsonlines.InvalidLineError as exc:
                message = str(exc).split(" (line ")[0]  # drop jsonlines' own (always 1) line suffix
                message = message.removeprefix("line contains ").removeprefix("line is ")
                yield number, ErrorRecord(number, number, "InvalidJSON", f"line {number}: {message}: {_excerpt(line)}")
                continue
            if not isinstance(value, dict):
                kind = "null" if value is None else type(value).__name__
                yield number, ErrorRecord(
                    number, number, "InvalidInput",
                    f"line {number}: expected a JSON object, got {kind}: {_excerpt(line)}",
                )
                continue
            yield number, value
    finally:
        if owned:
            stream.close()


def dumps_line(record: Mapping[str, Any] | ErrorRecord) -> bytes:
    """Encode one record as a compact UTF-8 JSON line ending in ``\\n`` (deterministic, insertion key order).

    Strings that cannot be encoded as UTF-8 (lone surrogates from ``\\ud800`` escapes in the input) are written
    with ASCII escapes instead, so the line stays valid JSON.

    Args:
        record: a JSON-serialisable mapping or an ``ErrorRecord``.

    Returns:
        The encoded line.

    Raises:
        ValueError: the record holds NaN/Infinity. TypeError: it holds a non-JSON value.
    """
    obj = record.to_json() if isinstance(record, ErrorRecord) else record
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False) + "\n").encode("ascii")
