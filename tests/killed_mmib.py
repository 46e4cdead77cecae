"""`python killed_mmib.py STOP CUT mmib-args...`: runs mmib and SIGKILLs it inside the output write that reaches
line STOP, after writing the first CUT % (size + 1) bytes of that write (a torn line, as a real kill can leave).

Deterministic, unlike a kill from outside at a polled line count, which races the run's end
(tests/test_batch_invariance.py).
"""
from __future__ import annotations

import os
import signal
import sys

import mmib_cli.io.writer as writer

stop, cut = int(sys.argv[1]), int(sys.argv[2])
real = writer._write_all
written = 0


def killing(fd: int, data: bytes) -> None:
    global written
    lines = data.count(b"\n")
    if written + lines >= stop:
        real(fd, data[: cut % (len(data) + 1)])
        os.kill(os.getpid(), signal.SIGKILL)
    written += lines
    real(fd, data)


writer._write_all = killing
from mmib_cli.cli import main  # noqa: E402

sys.argv = ["mmib", *sys.argv[3:]]
main()
