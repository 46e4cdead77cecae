"""Whole-file outputs (HTML report, Label Studio tasks, CoNLL): checked before any work, written through the one
output-safety path (`io.safefile`): locked (`OUTPUT.lock`), written to a new `OUTPUT.partial` (never through a
planted link) and renamed into place, never over the file the command reads."""
from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

from mmib_cli.errors import MMIBError, OutputExists, UsageError
from mmib_cli.io.lock import OutputLock
from mmib_cli.io.safefile import check_output_name, display_path, output_target, refuse_same_file, write_atomic

__all__ = ["SIDECAR_SUFFIXES", "check_writable", "write_text_output"]

SIDECAR_SUFFIXES = (".partial", ".lock")
"""The files a whole-file output brings next to it while it is written."""


def check_writable(path: str | Path, *, force: bool = False, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse an output that cannot or must not be written, before any work is done.

    Args:
        path: the output (`-` is stdout).
        force: allow replacing an existing output.
        inputs: the files the command reads: the output must be none of them (`io.safefile.refuse_same_file`).

    Raises:
        OutputExists: `path` exists and `force` is not set.
        UsageError: `path` is a directory, one of `inputs`, or a name too long for the filesystem.
        MMIBError: `-` while stdout is closed.
    """
    inputs = list(inputs)
    if str(path) == "-":
        if sys.stdout is None:
            raise MMIBError("-o - writes to stdout, but stdout is closed (>&-): give -o FILE")
        refuse_same_file(inputs, ["-"])
        return
    target = output_target(path)
    try:
        info = os.stat(target)
    except OSError:
        info = None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise UsageError(f"output {display_path(path)} is a directory: give a file name inside it")
    check_output_name(target, SIDECAR_SUFFIXES)
    refuse_same_file(inputs, [target, *(target.with_name(target.name + s) for s in SIDECAR_SUFFIXES)])
    if info is not None and not force:
        raise OutputExists(f"output {display_path(path)} already exists: pass --force to overwrite it")


def _encoded(text: str) -> bytes:
    """UTF-8; a lone surrogate (from a `\\ud800` escape in the data) becomes the text `\\ud800`, which in a JSON
    string is the same escape again, and never an encoding error."""
    return text.encode("utf-8", "backslashreplace")


def write_text_output(path: str | Path, text: str, *, force: bool = False,
                      inputs: Iterable[str | Path] = ()) -> None:
    """Write `text` to `path` (or stdout for `-`) via a new `path.partial` + rename, so `path` is always complete.

    A symlinked `path` is followed (its target is replaced, the link kept); the lock and the partial file next to
    it are never followed.

    Raises:
        OutputExists, UsageError, MMIBError: see `check_writable`; another run holds the lock; a planted link.
        OSError: the file cannot be written.
    """
    inputs = list(inputs)
    check_writable(path, force=force, inputs=inputs)
    if str(path) == "-":
        sys.stdout.buffer.write(_encoded(text)) if hasattr(sys.stdout, "buffer") else sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = output_target(path)
    with OutputLock(target):
        check_writable(path, force=force, inputs=inputs)  # again, now that no other run can write it
        write_atomic(target, _encoded(text), temporary=target.with_name(target.name + ".partial"))
