"""SIGINT/SIGTERM for a whole run, start-up (model loading) included: the first signal stops the run cleanly, a
second one ends the process at once."""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Interrupted", "install", "interruptible", "received"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # every first signal of this process, in order


class Interrupted(BaseException):
    """Raised in the main thread by the first SIGINT/SIGTERM (a BaseException, like KeyboardInterrupt, so that
    per-record error handling never mistakes it for a bad record)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _first(signum: int, frame: Any) -> None:
    _received.append(signum)
    for other in _SIGNALS:  # a second signal no longer waits for the final flush
        signal.signal(other, _second)
    raise Interrupted(signum)


def _second(signum: int, frame: Any) -> None:
    os._exit(128 + signum)  # complete lines are already in OUTPUT.partial; --resume repairs a cut last line


def received() -> tuple[int, ...]:
    """The signals `Interrupted` was raised for so far in this process. Native code (safetensors, torch) may turn
    the `Interrupted` raised inside it into an error of its own; comparing this before and after a call tells an
    interrupted call from a failed one."""
    return tuple(_received)


def install() -> None:
    """For the rest of the process: the first SIGINT/SIGTERM raises `Interrupted`, a second exits at once."""
    for signum in _SIGNALS:
        signal.signal(signum, _first)


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, the first SIGINT/SIGTERM raises `Interrupted` and a second exits with 130/143 at once.

    Outside the main thread (where handlers cannot be set) the block runs with the signals as they are.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _first) for signum in _SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
