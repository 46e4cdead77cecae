"""Standard streams a scheduler closed (`2>&-`, `>&-`, `<&-`): mmib still runs, and never writes a file by accident.

A process started with descriptor 0, 1 or 2 closed would hand that number to the next file it opens (a lock file, an
output), and anything later written to "stdout" or "stderr" (a library's message, a worker process) would land in
that file. `guard_standard_streams` points each closed descriptor at the null device first. A closed stderr then
simply discards mmib's messages (the run and its exit code are unchanged); a closed stdin or stdout stays `None`
in `sys`, so `-` as INPUT or `-o` is refused with one clear line (exit 1) before any work.
"""
from __future__ import annotations

import os
import sys

__all__ = ["CLOSED", "guard_standard_streams"]

CLOSED: set[int] = set()
"""The standard descriptors (0, 1, 2) that were closed when mmib started."""


def guard_standard_streams() -> None:
    """Give every closed standard descriptor the null device; a closed stderr gets a Python stream on it."""
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        devnull = os.open(os.devnull, flags)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)
        CLOSED.add(fd)
    if 2 in CLOSED or sys.stderr is None:
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
