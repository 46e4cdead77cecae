"""Atomic, resumable, locked JSONL output: `OUTPUT.partial` renamed to `OUTPUT` when the run completes.

Records are encoded by `mmib_cli.io.jsonl.dumps_line` and pushed to the OS only as whole lines. A write that fails
(a full disk, an I/O error) ends the run with one `MMIBError` naming the file and the OS error, after cutting
`OUTPUT.partial` back to its last complete line, so `--resume` continues once the problem is fixed. Every output
record carries `"line"` (the 1-based input line), which is how `--resume` knows which input lines are done.

Targets: `-` is stdout; an existing FIFO or device (`/dev/null`) is written straight into (no `.partial`, no
rename); a symlink is followed, so the file it points to is replaced, never the link; a directory is refused.
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
from typing import IO, Any

from mmib_cli.errors import MMIBError, OutputClosed, OutputExists, OutputWriteError, UsageError
from mmib_cli.io.jsonl import dumps_line
from mmib_cli.io.lock import OutputLock
from mmib_cli.io.records import ErrorRecord, PostId, SkippedRecord

logger = logging.getLogger(__name__)

__all__ = ["AtomicJSONLWriter", "OutputClosed", "OutputWriteError", "encode_record", "partial_path"]

FLUSH_BYTES = 1 << 20
"""Records are pushed to the OS at `flush()` or once this many bytes are waiting."""


def partial_path(path: Path) -> Path:
    """The in-progress file of an output: `PATH.partial` next to it."""
    return path.with_name(path.name + ".partial")


def _load_done(partial: Path) -> dict[int, PostId]:
    """Read an existing output: repair (truncate) a cut last line, return `{line: id}` of the complete records.

    Only a last line without its newline (a write cut by a kill) is dropped; the file is otherwise left unchanged.

    Raises:
        OutputExists: a complete line is not JSON or lacks an integer `"line"` (not mmib output).
    """
    done: dict[int, PostId] = {}
    keep = 0  # byte length of the complete lines
    with open(partial, "rb") as f:
        for number, raw in enumerate(iter(f.readline, b""), start=1):
            if not raw.endswith(b"\n"):
                logger.warning("%s: dropping a cut last line (%d bytes) before resuming", partial, len(raw))
                break
            try:
                obj = json.loads(raw)
                line = obj["line"]
                if not isinstance(line, int) or isinstance(line, bool):
                    raise TypeError(f"'line' is {line!r}")
            except (ValueError, KeyError, TypeError) as exc:
                raise OutputExists(
                    f"cannot resume {partial}: its line {number} is not an mmib output record "
                    f"({type(exc).__name__}: {exc}); pass --force to start over"
                ) from exc
            done[line] = obj.get("id", line)
            keep = f.tell()
    if keep != partial.stat().st_size:
        with open(partial, "r+b") as f:
            f.truncate(keep)
    return done


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
        raise MMIBError(f"cannot write output {path}: {exc.strerror or exc}") from exc


class AtomicJSONLWriter:
    """Write JSONL output atomically: to `PATH.partial`, renamed to `PATH` on a successful `close()`.

    Creating the writer locks the output (`PATH.lock`, see `mmib_cli.io.lock`) and checks it, before any slow
    work; the `.partial` file is created at the first write. Use as a context manager: a normal exit closes
    (renames), an exception (`KeyboardInterrupt` included) aborts, keeping the `.partial` of complete lines for
    `--resume`, and releases the lock.

    Args:
        path: output file, `"-"` for stdout, or an existing FIFO/device (written directly).
        force: overwrite an existing output (the old file stays until the new one is complete).
        resume: continue `PATH.partial` (or a finished `PATH`): its cut last line is dropped, its records'
            `(line, id)` pairs are in `done_lines`, new records are appended.
        on_open: called once the `.partial` file is created, before its first byte (writes the run's provenance).

    Raises:
        OutputExists: `PATH` or a non-empty `PATH.partial` exists and neither `force` nor `resume` is set,
            or a resumed file is not mmib output.
        OutputLocked: another run holds the lock.
        UsageError: both `force` and `resume`; a directory; `resume` into a FIFO or device.
        MMIBError: the output's folder is missing or not writable.
    """

    def __init__(self, path: Path | str, *, force: bool = False, resume: bool = False,
                 on_open: Callable[[], None] | None = None) -> None:
        if force and resume:
            raise UsageError("use either --resume or --force, not both")
        self.path: Path | None = None
        self.direct = False  # written straight into (stdout, a FIFO, a device): no .partial, no rename
        self.resumed_from: Path | None = None
        self._on_open = on_open
        self._stream: IO[bytes] | None = None
        self._fd: int | None = None
        self._buffer = bytearray()
        self._committed = 0  # bytes of complete lines known to be in the file
        self._closed = self._opened = False
        self._written = 0
        self._done: dict[int, PostId] = {}
        self._move_finished = False
        self._lock: OutputLock | None = None
        if str(path) == "-":
            self.direct = True
            if resume:
                logger.warning("--resume has no effect when writing to stdout")
            return
        target = Path(os.path.realpath(path))  # a symlink's target is written, the link stays
        info = _stat(target)
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise UsageError(f"output {path} is a directory: give a file name such as {Path(path) / 'out.jsonl'}")
        self.path = target
        if info is not None and not stat.S_ISREG(info.st_mode):  # /dev/null, a FIFO, a terminal
            if resume:
                raise UsageError(f"--resume needs a regular output file; {path} is a FIFO or device")
            self.direct = True
            return
        self._lock = OutputLock(target)
        try:  # a signal may arrive anywhere here: the lock (if taken) is released, its file removed
            self._lock.acquire()
            self._check_existing(force=force, resume=resume)
        except BaseException:
            self._lock.release()
            raise

    def _check_existing(self, *, force: bool, resume: bool) -> None:
        assert self.path is not None
        partial = partial_path(self.path)
        if resume:
            source = partial if partial.exists() else self.path if self.path.exists() else None
            if source is not None:
                self._done = _load_done(source)
                self.resumed_from = source
                self._move_finished = source == self.path  # moved to .partial only once writing starts
                logger.info("resuming %s: %d records already written", source, len(self._done))
            return
        if force:
            return
        if self.path.exists():
            raise OutputExists(
                f"output {self.path} already exists: pass --force to overwrite it or --resume to continue it"
            )
        if partial.exists() and partial.stat().st_size > 0:
            raise OutputExists(
                f"{partial} is left from an interrupted run: pass --resume to continue it or --force to start over"
            )

    @property
    def partial_path(self) -> Path | None:
        """`PATH.partial` (None for stdout and other direct outputs)."""
        return None if self.path is None or self.direct else partial_path(self.path)

    @property
    def done_lines(self) -> frozenset[tuple[int, PostId]]:
        """`(line, id)` of every record already in the resumed output (empty unless `resume`)."""
        return frozenset(self._done.items())

    def is_done(self, line: int, id: PostId | None = None) -> bool:
        """Whether input `line` was already written by the resumed run.

        Raises:
            OutputExists: the line was written for another id (the input changed since the interrupted run).
        """
        if line not in self._done:
            return False
        if id is not None and self._done[line] != id:
            raise OutputExists(
                f"cannot resume: input line {line} has id {id!r} but the partial output wrote id "
                f"{self._done[line]!r} for it (the input changed); pass --force to start over"
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
        else:
            target = self.path if self.direct else partial_path(self.path)
            try:
                if self._move_finished:
                    os.replace(self.path, target)
                    self._move_finished = False
                append = bool(self._done) or self.resumed_from is not None
                flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append or self.direct else os.O_TRUNC)
                self._fd = os.open(target, flags, 0o644)
                self._committed = os.fstat(self._fd).st_size if append else 0
            except OSError as exc:
                raise MMIBError(f"cannot write output {target}: {exc.strerror or exc}") from exc
            if self._on_open is not None and not self.direct:
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
        self._written += 1
        if len(self._buffer) >= FLUSH_BYTES:
            self.flush()
        return written

    def flush(self) -> None:
        """Push the queued lines to the OS (complete lines only).

        Raises:
            OutputWriteError: the write failed; the file is cut back to its last complete line.
            OutputClosed: stdout's reader went away.
        """
        if not self._opened:
            self.open()
        if not self._buffer:
            return
        data, self._buffer = bytes(self._buffer), bytearray()
        try:
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
        if self._fd is not None:
            try:
                if not self.direct:
                    os.ftruncate(self._fd, self._committed)
                    kept = f"; its {self._committed} bytes of complete lines are kept for --resume"
            finally:
                os.close(self._fd)
                self._fd = None
        if self._lock is not None:
            self._lock.release()
        raise OutputWriteError(f"cannot write {target or 'stdout'}: {exc.strerror or exc}{kept}") from exc

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
                    logger.debug("wrote %s (%d new records)", self.path, self._written)
        finally:
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
                if not self.direct:
                    logger.warning("stopped: kept %s for --resume", self.partial_path)
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
