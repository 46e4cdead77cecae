"""Streaming JSONL input (line-numbered, bad lines become error records) and the encoding of output lines.

Input may be gzip, bzip2 or xz compressed (recognised by its first bytes, whatever its name) and may be a pipe
(stdin, a FIFO, ``<(zcat a.gz)``). Every physical line gives exactly one item, so one output line answers each
input line: a JSON object, or an error record (malformed JSON, not an object, too long, nested deeper than
``MAX_NESTING``), or a ``skipped`` record for a blank line. Non-finite numbers (``NaN``, ``Infinity``,
``-Infinity``, and literals such as ``1e999`` that overflow a double) are read as ``null``, so output is always
strict JSON.

Output lines are compact JSON (``ensure_ascii=False``, keys in insertion order), one per record (``dumps_line``);
the atomic, resumable, locked output file is `mmib_cli.io.writer.AtomicJSONLWriter`.
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import json
import logging
import lzma
import math
import os
import stat
import sys
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Union

import jsonlines

from mmib_cli.errors import InputUnreadable
from mmib_cli.io.records import ErrorRecord, SkippedRecord

logger = logging.getLogger(__name__)

__all__ = ["BLANK_LINE", "DEFAULT_MAX_LINE_BYTES", "LINE_DIGEST_CHARS", "read_lines_traced", "MAX_NESTING", "dumps_line", "input_base_dir", "is_stream_input",
           "open_input", "read_lines"]

DEFAULT_MAX_LINE_BYTES = 32 * 1024 * 1024
"""Longest input line read into memory (bytes); longer lines become ``InvalidInput`` error records."""

MAX_NESTING = 100
"""Deepest accepted nesting of arrays/objects in an input line (the line's object is level 1). A deeper line
becomes an ``InvalidInput`` error record, so no later step (pickling to workers, JSON output) can exceed Python's
recursion limit on it."""

BLANK_LINE = "blank line"
"""``skipped.reason`` of an empty or whitespace-only input line."""

LINE_DIGEST_CHARS = 32
"""Hex digits kept of each input line's sha256 (128 bits): what `--resume` checks a kept record against."""

_CHUNK = 1 << 20
_EXCERPT = 60
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))
_READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)

Source = Union[Path, str, IO[bytes], IO[str]]
Item = Union[dict[str, Any], ErrorRecord, SkippedRecord]


class _TooDeep(Exception):
    pass


def _excerpt(line: bytes | str) -> str:
    text = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line
    text = text.strip()
    return repr(text if len(text) <= _EXCERPT else text[: _EXCERPT - 3] + "...")


def _line_digest(digest: Any) -> str:
    return digest.hexdigest()[:LINE_DIGEST_CHARS]


def _physical_lines(stream: IO[Any], max_bytes: int | None,
                    name: str) -> Iterator[tuple[int, bytes | str | None, str | None]]:
    """Yield ``(line_number, line, digest)`` for every physical line; ``None`` for a line longer than ``max_bytes``.

    ``digest`` is the line's ``LINE_DIGEST_CHARS``-hex-digit sha256 prefix over its bytes, newline included, or
    None for a last line without its newline (a line still being written: not yet a line of the input). An
    over-long line is skipped in chunks, so memory stays bounded by ``max_bytes``.

    Raises:
        InputUnreadable: the stream fails part-way (corrupt or truncated compressed data, an I/O error).
    """
    number = 0
    try:
        while True:
            line = stream.readline() if max_bytes is None else stream.readline(max_bytes + 1)
            if not line:
                return
            number += 1
            newline = b"\n" if isinstance(line, bytes) else "\n"
            digest = hashlib.sha256(_as_bytes(line))
            if max_bytes is not None and len(line) > max_bytes and not line.endswith(newline):
                rest = line
                while True:  # discard the rest of the over-long line
                    rest = stream.readline(_CHUNK)
                    digest.update(_as_bytes(rest))
                    if not rest or rest.endswith(newline):
                        break
                yield number, None, _line_digest(digest) if rest else None
                continue
            yield number, line, _line_digest(digest) if line.endswith(newline) else None
    except _READ_ERRORS as exc:
        raise InputUnreadable(
            f"cannot read input {name} after line {number}: {type(exc).__name__}: {exc} (a truncated or corrupt "
            "compressed file?); the lines before it were read"
        ) from exc


def _as_bytes(line: bytes | str) -> bytes:
    return line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")


class _Prefixed(io.RawIOBase):
    """A raw stream that returns ``head`` and then the rest of ``stream`` (sniffing a pipe without seeking)."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        super().__init__()
        self._head, self._stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count], self._head = self._head[:count], self._head[count:]
            return count
        data = self._stream.read1(len(buffer)) if hasattr(self._stream, "read1") else self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _decompressed(stream: IO[bytes]) -> tuple[IO[bytes], str | None]:
    """``stream`` itself, or a decompressing reader when its first bytes are a gzip, bzip2 or xz signature."""
    try:
        if stream.seekable():
            position = stream.tell()
            head = stream.read(6)
            stream.seek(position)
        else:
            head = stream.read(6)
            stream = io.BufferedReader(_Prefixed(head, stream), _CHUNK)  # type: ignore[arg-type]
    except (NotImplementedError, io.UnsupportedOperation, AttributeError):  # a stream that only has readline
        return stream, None
    kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=stream, mode="rb"), kind
    if kind == "bzip2":
        return bz2.BZ2File(stream, mode="rb"), kind
    if kind == "xz":
        return lzma.LZMAFile(stream, mode="rb"), kind
    return stream, None


@contextlib.contextmanager
def open_input(source: Source) -> Iterator[IO[Any]]:
    """Open an input for line reading: a path, ``"-"`` (stdin) or an open stream; compressed input is decompressed.

    Everything this opens is closed on exit; a stream passed in (and stdin) is left open.

    Args:
        source: a path (a regular file, a FIFO, ``/dev/fd/N``), ``"-"`` for stdin, or an open binary or text stream.

    Yields:
        The stream to read lines from (bytes, or str for a text stream).

    Raises:
        OSError: the path cannot be opened.
    """
    with contextlib.ExitStack() as stack:
        if isinstance(source, (str, os.PathLike)):
            if str(source) == "-":
                if sys.stdin is None:  # started with stdin closed (`<&-`)
                    raise InputUnreadable("INPUT is - but stdin is closed: give a file, or pipe posts into mmib")
                raw: IO[Any] = getattr(sys.stdin, "buffer", sys.stdin)
            else:
                raw = stack.enter_context(open(source, "rb"))
        else:
            raw = source
        if isinstance(raw, io.TextIOBase) or not hasattr(raw, "readline"):
            yield raw
            return
        stream, kind = _decompressed(raw)
        if stream is not raw:
            stack.callback(stream.close)  # closes only the wrappers made here, never `raw`
        if kind is not None:
            logger.debug("input %s is %s-compressed: decompressing while reading", source, kind)
        yield stream


def is_stream_input(path: str | os.PathLike[str]) -> bool:
    """Whether an input path can only be read once, front to back: ``-`` (stdin), a FIFO, a pipe, a socket, a tty.

    Such an input is read by one reader (never re-opened by several workers).
    """
    if str(path) == "-":
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def input_base_dir(path: str | os.PathLike[str]) -> Path:
    """The folder relative image paths of an input resolve against: the input file's, else the current one."""
    if is_stream_input(path):
        return Path.cwd()
    return Path(path).resolve().parent


def _finite(value: Any, max_depth: int) -> int:
    """Replace non-finite floats (NaN, +-Infinity, overflowed literals) by None, in place; return how many.

    Iterative, so arbitrarily deep values cannot exhaust the stack.

    Raises:
        _TooDeep: ``value`` nests arrays/objects deeper than ``max_depth`` levels.
    """
    replaced = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise _TooDeep
        pairs = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in pairs:
            if type(child) is float:
                if not math.isfinite(child):
                    node[key] = None
                    replaced += 1
            elif isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return replaced


def _parse(number: int, line: bytes | str, max_depth: int) -> Item:
    """One non-blank line → its JSON object, or the error record saying why it cannot be one."""
    try:
        value = jsonlines.Reader((line,)).read(allow_none=True)
    except jsonlines.InvalidLineError as exc:
        message = str(exc).split(" (line ")[0]  # drop jsonlines' own (always 1) line suffix
        message = message.removeprefix("line contains ").removeprefix("line is ")
        return ErrorRecord(number, number, "InvalidJSON", f"line {number}: {message}: {_excerpt(line)}")
    except RecursionError:
        return ErrorRecord(number, number, "InvalidInput",
                           f"line {number}: nested deeper than {max_depth} levels of arrays/objects: {_excerpt(line)}")
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted data is this line's error
        return ErrorRecord(number, number, "InvalidJSON",
                           f"line {number}: cannot be parsed ({type(exc).__name__}: {exc}): {_excerpt(line)}")
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        return ErrorRecord(number, number, "InvalidInput",
                           f"line {number}: expected a JSON object, got {kind}: {_excerpt(line)}")
    try:
        replaced = _finite(value, max_depth)
    except _TooDeep:
        return ErrorRecord(number, number, "InvalidInput",
                           f"line {number}: nested deeper than {max_depth} levels of arrays/objects: {_excerpt(line)}")
    if replaced:
        logger.debug("line %d: %d non-finite number(s) (NaN/Infinity) read as null", number, replaced)
    return value


def read_lines(
    source: Source,
    *,
    max_line_bytes: int | None = DEFAULT_MAX_LINE_BYTES,
    max_depth: int = MAX_NESTING,
) -> Iterator[tuple[int, Item]]:
    """Stream a JSONL input as ``(line_number, item)`` pairs, one per physical line; bad lines never raise.

    Numbers are physical 1-based line numbers. A UTF-8 BOM is ignored. Memory is bounded by the longest accepted
    line. gzip/bzip2/xz input is decompressed (see ``open_input``). Non-finite numbers (``NaN``, ``Infinity``,
    ``1e999``) are read as ``None``.

    Args:
        source: a path, ``"-"`` for stdin, or an open (binary or text) stream, which is left open.
        max_line_bytes: longest line read; a longer one becomes an ``InvalidInput`` error record (None: no limit).
        max_depth: deepest accepted nesting of arrays/objects (the line's object is level 1).

    Yields:
        ``(line, dict)`` for each JSON object; ``(line, SkippedRecord)`` with reason ``BLANK_LINE`` for an empty or
        whitespace-only line; ``(line, ErrorRecord)`` with type ``InvalidJSON`` for malformed JSON or invalid
        UTF-8, ``InvalidInput`` for a JSON value that is not an object, a line that is too long or too deeply nested.

    Raises:
        OSError: the source path cannot be opened (raised on the first ``next``).
        InputUnreadable: the input fails part-way (truncated or corrupt compressed data, an I/O error).
    """
    for number, item, _ in read_lines_traced(source, max_line_bytes=max_line_bytes, max_depth=max_depth):
        yield number, item


def read_lines_traced(
    source: Source,
    *,
    max_line_bytes: int | None = DEFAULT_MAX_LINE_BYTES,
    max_depth: int = MAX_NESTING,
) -> Iterator[tuple[int, Item, str | None]]:
    """``read_lines`` with each line's digest: ``(line_number, item, digest)``.

    ``digest`` is the sha256 prefix (``LINE_DIGEST_CHARS`` hex digits) of the line's bytes as read (after
    decompression), newline included, computed as the line is read; None for a last line without its newline,
    which a producer may still be writing (`--resume` redoes such a line).
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else str(getattr(source, "name", "stream"))
    with open_input(source) as stream:
        for number, line, digest in _physical_lines(stream, max_line_bytes, name):
            if line is None:
                yield number, ErrorRecord(
                    number, number, "InvalidInput", f"line {number}: longer than {max_line_bytes} bytes; skipped"
                ), digest
            elif not line.strip():
                yield number, SkippedRecord(number, number, BLANK_LINE), digest
            else:
                yield number, _parse(number, line, max_depth), digest


def dumps_line(record: Mapping[str, Any] | ErrorRecord | SkippedRecord) -> bytes:
    """Encode one record as a compact UTF-8 JSON line ending in ``\\n`` (deterministic, insertion key order).

    The line is always strict JSON. Strings that cannot be encoded as UTF-8 (lone surrogates from ``\\ud800``
    escapes in the input) are written with ASCII escapes instead. ``mmib_cli.io.writer.encode_record`` turns a
    record that cannot be encoded into the error record of its line.

    Args:
        record: a JSON-serialisable mapping, an ``ErrorRecord`` or a ``SkippedRecord``.

    Returns:
        The encoded line.

    Raises:
        ValueError: the record holds NaN/Infinity. TypeError: it holds a non-JSON value.
    """
    obj = record.to_json() if isinstance(record, (ErrorRecord, SkippedRecord)) else record
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False) + "\n").encode("ascii")
