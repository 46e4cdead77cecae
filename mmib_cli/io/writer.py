"""Atomic, resumable, locked JSONL output: `OUTPUT.partial` renamed to `OUTPUT` when the run completes.

Records are encoded by `mmib_cli.io.jsonl.dumps_line` and pushed to the OS only as whole lines. A write that fails
(a full disk, an I/O error) ends the run with one `MMIBError` naming the file and the OS error, after cutting
`OUTPUT.partial` back to its last complete line, so `--resume` continues once the problem is fixed. Every output
record carries `"line"` (the 1-based input line), which is how `--resume` knows which input lines are done.

Targets: `-` is stdout; an existing FIFO or device (`/dev/null`) is written straight into (no `.partial`, no
rename); a symlink is followed, so the file it points to is replaced, never the link; a directory is refused.
The files next to the output (`.lock`, `.partial`, `.run.lines`) are opened through `mmib_cli.io.safefile`: a
symlink or hard link planted there is never written through.

With `line_digests`, `OUTPUT.run.lines` holds `LINE DIGEST` for every record, in the same order, written before the
records: `--resume` keeps a record only when the current input's line has that digest (checked by the reader), and
redoes a record whose input line had no newline yet (`NOT_DONE`).
"""
from __future__ import annotations

import errno
import io
import json
import logging
import os
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

from mmib_cli.errors import MMIBError, OutputClosed, OutputExists, OutputWriteError, UsageError
from mmib_cli.io.jsonl import dumps_line
from mmib_cli.io.lock import OutputLock
from mmib_cli.io.records import ErrorRecord, PostId, SkippedRecord
from mmib_cli.io.safefile import check_output_name, display_path, open_existing, open_new, output_target

logger = logging.getLogger(__name__)

__all__ = ["AtomicJSONLWriter", "OutputClosed", "OutputWriteError", "encode_record", "lines_path", "partial_path"]

FLUSH_BYTES = 1 << 20
"""Records are pushed to the OS at `flush()` or once this many bytes are waiting."""


def partial_path(path: Path) -> Path:
    """The in-progress file of an output: `PATH.partial` next to it."""
    return path.with_name(path.name + ".partial")


LINES_SUFFIX = ".run.lines"
"""Suffix of an output's line-digest sidecar: one `LINE DIGEST` line per output record, in the same order."""
SIDECAR_SUFFIXES = (".partial", ".lock", ".run.json", ".run.json.tmp", LINES_SUFFIX)
"""Every name an output file brings next to it (checked for length before any slow work)."""
NOT_DONE = "-"
"""Digest of a record whose input line cannot be proven complete (a last line without its newline)."""


def lines_path(path: Path) -> Path:
    """The line-digest sidecar of an output: `PATH.run.lines` next to it (kept with the finished output)."""
    return path.with_name(path.name + LINES_SUFFIX)


class _Kept(NamedTuple):
    """What `--resume` keeps of an earlier output (see `_load_resume`)."""

    done: dict[int, tuple[PostId, str | None]]  # line -> (id, digest of the input line it was made from)
    keep_bytes: int  # the records kept: the first keep_bytes of the output
    keep_lines_bytes: int | None  # their digest entries: the first bytes of the sidecar (None: no sidecar)
    errors: int  # kept error records


def _records(fd: int, name: Path) -> list[tuple[int, int, Any]]:
    """`(end offset, line, id)` of every complete record of an output (a cut last line is left out).

    Raises:
        OutputExists: a complete line is not JSON or lacks an integer `"line"` (not mmib output), or the line
            numbers do not increase (duplicated or reordered records: not one run's output).
    """
    found: list[tuple[int, int, Any]] = []
    offset = 0
    hint = "pass --force to start over"
    with open(fd, "rb", closefd=False) as f:
        f.seek(0)
        for number, raw in enumerate(iter(f.readline, b""), start=1):
            if not raw.endswith(b"\n"):
                logger.warning("%s: dropping a cut last line (%d bytes) before resuming", name, len(raw))
                break
            try:
                obj = json.loads(raw)
                line = obj["line"]
                if not isinstance(line, int) or isinstance(line, bool) or line < 1:
                    raise TypeError(f"'line' is {line!r}")
            except (ValueError, KeyError, TypeError) as exc:
                raise OutputExists(f"cannot resume {name}: its line {number} is not an mmib output record "
                                   f"({type(exc).__name__}: {exc}); {hint}") from exc
            if found and line <= found[-1][1]:
                how = "twice" if line == found[-1][1] else f"after line {found[-1][1]}"
                raise OutputExists(f"cannot resume {name}: it is not one run's output in input order (its record "
                                   f"{number} answers input line {line} {how}); {hint}")
            offset += len(raw)
            found.append((offset, line, (obj.get("id", line), "error" in obj)))
    return found


def _digest_entries(fd: int) -> list[tuple[int, int, str]]:
    """`(end offset, line, digest)` of every complete entry of a line-digest sidecar."""
    entries: list[tuple[int, int, str]] = []
    offset = 0
    with open(fd, "rb", closefd=False) as f:
        f.seek(0)
        for raw in iter(f.readline, b""):
            if not raw.endswith(b"\n"):
                break
            number, _, digest = raw.decode("ascii", "replace").strip().partition(" ")
            try:
                entries.append((offset + len(raw), int(number), digest))
            except ValueError:
                break  # damaged from here on: the records past it are not proven
            offset += len(raw)
    return entries


def _load_resume(fd: int, name: Path, lines_fd: int | None, lines_name: Path) -> _Kept:
    """What an earlier output proves done: its complete records, each matched to the digest of its input line.

    With a line-digest sidecar, the i-th record must answer the i-th entry's line; records past the last entry
    (written while the sidecar was not) and trailing records whose line was not complete (`NOT_DONE`) are dropped,
    to be made again. Nothing is cut here: `keep_bytes` and `keep_lines_bytes` say what to keep.

    Raises:
        OutputExists: the output is not mmib output, not in input order, or disagrees with its sidecar.
    """
    records = _records(fd, name)
    if lines_fd is None:
        done = {line: (ident, None) for _, line, (ident, _) in records}
        return _Kept(done, records[-1][0] if records else 0, None,
                     sum(is_error for _, _, (_, is_error) in records))
    entries = _digest_entries(lines_fd)
    count = min(len(records), len(entries))
    for i in range(count):
        if records[i][1] != entries[i][1]:
            raise OutputExists(f"cannot resume {name}: its record {i + 1} answers input line {records[i][1]} but "
                               f"{lines_name.name} says line {entries[i][1]} (the files do not belong together); "
                               "pass --force to start over")
    while count and entries[count - 1][2] == NOT_DONE:
        count -= 1  # the input's last line was still being written: made again
    unproven = [i + 1 for i in range(count) if entries[i][2] == NOT_DONE]
    if unproven:
        raise OutputExists(f"cannot resume {name}: its record {unproven[0]} was made from an incomplete input line "
                           "but is not its last; pass --force to start over")
    if count < len(records):
        logger.warning("%s: %d record(s) at its end are made again (their input lines were not complete or not "
                       "recorded)", name, len(records) - count)
    done = {records[i][1]: (records[i][2][0], entries[i][2]) for i in range(count)}
    return _Kept(done, records[count - 1][0] if count else 0, entries[count - 1][0] if count else 0,
                 sum(records[i][2][1] for i in range(count)))


def encode_record(record: Mapping[str, Any] | ErrorRecord | SkippedRecord) -> tuple[bytes, Mapping[str, Any]]:
    """Encode one output record as its line (`dumps_line`); one that cannot be encoded as JSON (a value nested too
    deep, an object JSON does not know) becomes the error record of its line instead, so no line is lost.

    Returns:
        (the line, the record it encodes as a dict).

    Raises:
        TypeError, ValueError: the record has no `"line"` to report the error for.
    """
    try:
        return dumps_line(record), (record.to_json() if isinstance(record, (ErrorRecord, SkippedRecord)) else record)
    except (TypeError, ValueError, RecursionError) as exc:
        if isinstance(record, (ErrorRecord, SkippedRecord)) or "line" not in record:
            raise
        line = record["line"]
        logger.warning("line %s: the output record is not strict JSON (%s: %s); writing an error record instead",
                       line, type(exc).__name__, exc)
        error = ErrorRecord(record.get("id", line), line, "UnserializableRecord",
                            f"line {line}: the output record cannot be written as JSON ({type(exc).__name__}: {exc})")
        return dumps_line(error), error.to_json()


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MMIBError(f"cannot write output {display_path(path)}: {exc.strerror or exc}") from exc


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


class AtomicJSONLWriter:
    """Write JSONL output atomically: to `PATH.partial`, renamed to `PATH` on a successful `close()`.

    Creating the writer locks the output (`PATH.lock`, see `mmib_cli.io.lock`) and checks it, before any slow
    work; the `.partial` file is created at the first write. Every file next to the output is opened through
    `mmib_cli.io.safefile` (never through a planted link). Use as a context manager: a normal exit closes
    (renames), an exception (`KeyboardInterrupt` included) aborts, keeping the `.partial` of complete lines for
    `--resume`, and releases the lock.

    Args:
        path: output file, `"-"` for stdout, or an existing FIFO/device (written directly).
        force: overwrite an existing output (the old file stays until the new one is complete).
        resume: continue `PATH.partial` (or a finished `PATH`): its cut last line is dropped, its records'
            `(line, id)` pairs are in `done_lines`, new records are appended.
        on_open: called once the `.partial` file is created, before its first byte (writes the run's provenance).
        line_digests: keep `PATH.run.lines`, the digest of the input line each record answers (given by `expect`),
            so that `--resume` proves each kept record belongs to the current input's line (`done_digests`).

    Raises:
        OutputExists: `PATH` or a non-empty `PATH.partial` exists and neither `force` nor `resume` is set,
            or a resumed file is not mmib output or not consistent.
        OutputLocked: another run holds the lock.
        UsageError: both `force` and `resume`; a directory; `resume` into a FIFO or device; a name too long.
        UnsafeOutput: a file next to the output is a symlink or a hard link.
        MMIBError: the output's folder is missing or not writable.
    """

    def __init__(self, path: Path | str, *, force: bool = False, resume: bool = False,
                 on_open: Callable[[], None] | None = None, line_digests: bool = False) -> None:
        if force and resume:
            raise UsageError("use either --resume or --force, not both")
        self.path: Path | None = None
        self.direct = False  # written straight into (stdout, a FIFO, a device): no .partial, no rename
        self.resumed_from: Path | None = None
        self.kept_errors = 0  # error records among the resumed records
        self._on_open = on_open
        self._line_digests = line_digests
        self._stream: IO[bytes] | None = None
        self._fd: int | None = None
        self._lines_fd: int | None = None
        self._buffer = bytearray()
        self._lines_buffer = bytearray()
        self._marks: dict[int, str | None] = {}
        self._committed = 0  # bytes of complete lines known to be in the file
        self._lines_committed = 0
        self._closed = self._opened = False
        self._written = 0
        self._done: dict[int, tuple[PostId, str | None]] = {}
        self._kept: _Kept | None = None
        self._move_finished = False
        self._lock: OutputLock | None = None
        if str(path) == "-":
            self.direct = True
            if sys.stdout is None:
                raise MMIBError("-o - writes to stdout, but stdout is closed (>&-): give -o FILE")
            if resume:
                logger.warning("--resume has no effect when writing to stdout")
            return
        target = output_target(path)  # a symlink's target is written, the link stays
        info = _stat(target)
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise UsageError(f"output {display_path(path)} is a directory: give a file name such as "
                             f"{display_path(Path(path) / 'out.jsonl')}")
        self.path = target
        if info is not None and not stat.S_ISREG(info.st_mode):  # /dev/null, a FIFO, a terminal
            if resume:
                raise UsageError(f"--resume needs a regular output file; {display_path(path)} is a FIFO or device")
            self.direct = True
            return
        check_output_name(target, SIDECAR_SUFFIXES)
        self._lock = OutputLock(target)
        try:  # a signal may arrive anywhere here: the lock (if taken) is released, its file removed
            self._lock.acquire()
            self._check_existing(force=force, resume=resume)
        except BaseException:
            _close(self._fd)
            _close(self._lines_fd)
            self._fd = self._lines_fd = None
            self._lock.release()
            raise

    def _check_existing(self, *, force: bool, resume: bool) -> None:
        assert self.path is not None
        partial = partial_path(self.path)
        if resume:
            source = partial if os.path.lexists(partial) else self.path if self.path.exists() else None
            if source is not None:
                self._fd = open_existing(source, flags=os.O_RDWR | os.O_APPEND)
                sidecar = lines_path(self.path)
                if self._line_digests:
                    try:
                        self._lines_fd = open_existing(sidecar, flags=os.O_RDWR | os.O_APPEND)
                    except FileNotFoundError:
                        self._lines_fd = None
                    if self._lines_fd is None and os.fstat(self._fd).st_size:
                        raise OutputExists(
                            f"cannot resume {display_path(source)}: {sidecar.name} is missing (made by an earlier mmib "
                            "or removed), so nothing proves which input line each record answers; "
                            "pass --force to start over")
                self._kept = _load_resume(self._fd, source, self._lines_fd, sidecar)
                self._done = self._kept.done
                self.kept_errors = self._kept.errors
                self.resumed_from = source
                self._move_finished = source == self.path  # moved to .partial only once writing starts
                if not self._move_finished:  # a partial is repaired at once; a finished output only once moved
                    self._cut_to_kept()
                logger.info("resuming %s: %d records already written", display_path(source), len(self._done))
            return
        if force:
            return
        if self.path.exists():
            raise OutputExists(f"output {display_path(self.path)} already exists: pass --force to overwrite it or "
                               "--resume to continue it")
        if os.path.islink(partial) or (partial.exists() and partial.stat().st_size > 0):
            raise OutputExists(f"{display_path(partial)} is left from an interrupted run: pass --resume to continue "
                               "it or --force to start over")

    def _cut_to_kept(self) -> None:
        """Cut the resumed output and its digests back to the records kept (a cut line, unproven records)."""
        assert self._fd is not None and self._kept is not None
        os.ftruncate(self._fd, self._kept.keep_bytes)
        self._committed = self._kept.keep_bytes
        if self._lines_fd is not None and self._kept.keep_lines_bytes is not None:
            os.ftruncate(self._lines_fd, self._kept.keep_lines_bytes)
            self._lines_committed = self._kept.keep_lines_bytes

    @property
    def partial_path(self) -> Path | None:
        """`PATH.partial` (None for stdout and other direct outputs)."""
        return None if self.path is None or self.direct else partial_path(self.path)

    @property
    def done_lines(self) -> frozenset[tuple[int, PostId]]:
        """`(line, id)` of every record already in the resumed output (empty unless `resume`)."""
        return frozenset((line, ident) for line, (ident, _) in self._done.items())

    @property
    def done_digests(self) -> dict[int, str | None]:
        """Input line -> digest of the line each resumed record was made from (None without `line_digests`)."""
        return {line: digest for line, (_, digest) in self._done.items()}

    def expect(self, marks: Mapping[int, str | None]) -> None:
        """Digests of the input lines whose records are about to be written (None: a line not yet complete)."""
        if self._line_digests and not self.direct:  # stdout, a FIFO: nothing to resume, nothing to keep
            self._marks.update(marks)

    def is_done(self, line: int, id: PostId | None = None) -> bool:
        """Whether input `line` was already written by the resumed run.

        Raises:
            OutputExists: the line was written for another id (the input changed since the interrupted run).
        """
        if line not in self._done:
            return False
        if id is not None and self._done[line][0] != id:
            raise OutputExists(
                f"cannot resume: input line {line} has id {id!r} but the partial output wrote id "
                f"{self._done[line][0]!r} for it (the input changed); pass --force to start over"
            )
        return True

    @property
    def closed(self) -> bool:
        """Whether the writer was closed, aborted or failed."""
        return self._closed

    @property
    def records_written(self) -> int:
        """Number of records written by this writer (not counting resumed ones)."""
        return self._written

    def open(self) -> AtomicJSONLWriter:
        """Create the output (done by the first `write`/`flush`/`close`).

        Raises:
            MMIBError: the output cannot be created.
        """
        if self._closed:
            raise ValueError("writer is closed")
        if self._opened:
            return self
        if self.path is None:
            self._stream = getattr(sys.stdout, "buffer", None) or _TextToBinary(sys.stdout)
        elif self.direct:
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            except OSError as exc:
                raise MMIBError(f"cannot write output {display_path(self.path)}: {exc.strerror or exc}") from exc
        else:
            target = partial_path(self.path)
            try:
                if self._kept is not None:  # resumed: the descriptors opened (and checked) by _check_existing
                    if self._move_finished:
                        os.replace(self.path, target)
                        self._move_finished = False
                    self._cut_to_kept()
                else:
                    self._fd = open_new(target)
                if self._line_digests and self._lines_fd is None:
                    self._lines_fd = open_new(lines_path(self.path))
            except OSError as exc:
                raise MMIBError(f"cannot write output {display_path(target)}: {exc.strerror or exc}") from exc
            if self._on_open is not None:
                self._on_open()
        self._opened = True
        return self

    def write(self, record: Mapping[str, Any] | ErrorRecord | SkippedRecord) -> Mapping[str, Any]:
        """Queue one record as one line (pushed to the OS by `flush`, or once FLUSH_BYTES are waiting).

        Returns:
            What was written: the record, or the error record of its line when it cannot be encoded
            (`encode_record`).
        """
        if self._closed:
            raise ValueError("writer is closed")
        data, written = encode_record(record)
        self._buffer += data
        if self._line_digests and not self.direct:
            line = written.get("line")
            self._lines_buffer += f"{line} {self._marks.pop(line, None) or NOT_DONE}\n".encode("ascii")
        self._written += 1
        if len(self._buffer) >= FLUSH_BYTES:
            self.flush()
        return written

    def flush(self) -> None:
        """Push the queued lines to the OS (complete lines only; the digests before the records they prove).

        Raises:
            OutputWriteError: the write failed; the file is cut back to its last complete line.
            OutputClosed: stdout's reader went away.
        """
        if not self._opened:
            self.open()
        if not self._buffer:
            return
        data, self._buffer = bytes(self._buffer), bytearray()
        digests, self._lines_buffer = bytes(self._lines_buffer), bytearray()
        try:
            if self._lines_fd is not None and digests:
                _write_all(self._lines_fd, digests)
                self._lines_committed += len(digests)
            if self._fd is not None:
                _write_all(self._fd, data)
            else:
                assert self._stream is not None
                self._stream.write(data)
                self._stream.flush()
        except OSError as exc:
            self._failed(exc)
        self._committed += len(data)

    def _failed(self, exc: OSError) -> None:
        self._closed = True
        if self.path is None and exc.errno in (errno.EPIPE, errno.ECONNRESET):
            _silence_stdout()
            raise OutputClosed("stdout was closed by its reader; stopped") from exc
        target = self.path if self.direct or self.path is None else partial_path(self.path)
        kept = ""
        try:
            if self._fd is not None and not self.direct:
                os.ftruncate(self._fd, self._committed)
                kept = f"; its {self._committed} bytes of complete lines are kept for --resume"
            if self._lines_fd is not None:
                os.ftruncate(self._lines_fd, self._lines_committed)
        except OSError:
            pass
        finally:
            _close(self._fd)
            _close(self._lines_fd)
            self._fd = self._lines_fd = None
        if self._lock is not None:
            self._lock.release()
        shown = display_path(target) if target is not None else "stdout"
        raise OutputWriteError(f"cannot write {shown}: {exc.strerror or exc}{kept}") from exc

    def close(self) -> None:
        """Finish: flush, fsync and rename `PATH.partial` to `PATH` (direct outputs: flush only). Idempotent."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        try:
            if self._fd is not None:
                if not self.direct:
                    try:
                        os.fsync(self._fd)
                    except OSError as exc:
                        self._closed = False
                        self._failed(exc)
                os.close(self._fd)
                self._fd = None
                if not self.direct:
                    assert self.path is not None
                    os.replace(partial_path(self.path), self.path)
                    logger.debug("wrote %s (%d new records)", display_path(self.path), self._written)
        finally:
            _close(self._lines_fd)
            self._lines_fd = None
            if self._lock is not None:
                self._lock.release()

    def abort(self) -> None:
        """Stop without finishing: push complete lines and keep `PATH.partial` for `--resume`. Idempotent."""
        if self._closed:
            return
        try:
            if self._buffer:  # complete lines queued before the stop
                self.flush()
        finally:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
                if not self.direct and self._opened:
                    logger.warning("stopped: kept %s for --resume", display_path(self.partial_path or ""))
            _close(self._lines_fd)
            self._lines_fd = None
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> AtomicJSONLWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _write_all(fd: int, data: bytes) -> None:
    """`os.write` until every byte is written (a short write is retried; an error raises OSError)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's own flush at exit does not fail again on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):  # not a real file descriptor (tests)
        pass


class _TextToBinary(io.RawIOBase):
    """Minimal binary view of a text stream without `.buffer` (e.g. a replaced `sys.stdout`)."""

    def __init__(self, text_stream: IO[str]) -> None:
        super().__init__()
        self._text = text_stream

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._text.write(bytes(data).decode("utf-8"))
        return len(data)

    def flush(self) -> None:
        self._text.flush()
