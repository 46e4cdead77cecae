"""Logging to stderr, progress display and the end-of-run summary (everything meant for people)."""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar, Union

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbosity: int = 0) -> None:
    """Configure the root logger once: stderr only; rich handler on a TTY, plain lines otherwise.

    Args:
        verbosity: -1 quiet (warnings and errors), 0 info, 1+ debug.
    """
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_mmib", False):
            root.removeHandler(handler)
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    handler._mmib = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("transformers", "huggingface_hub", "urllib3", "httpx", "filelock", "PIL"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    quiet_transformers()


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and advisory warnings (they go to stderr unasked).

    Without importing transformers (half a second, and torch with it): the environment variables it reads at import
    are set, and only an already imported transformers is told directly.
    """
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def _clock(seconds: float) -> str:
    """`H:MM:SS` or `M:SS`."""
    seconds = int(max(0.0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


T = TypeVar("T")
Total = Union[int, None, Callable[[], Optional[int]]]


class Progress:
    """Progress of a long step: a rich bar on a terminal, a plain log line every `interval` seconds otherwise.

    Both show the count, the total with the percentage and the time left when the total is known, the rate and the
    time elapsed. `total` may be a function (counting an input's lines, say): it runs in a background thread, so the
    work starts at once and the total appears when it is known. On a terminal the bar redraws itself twice a
    second; elsewhere a line is logged every `interval` seconds while the count moves (and every `HEARTBEAT`
    seconds while it does not), from a background thread, so a slow step never leaves the log silent.

    Args:
        description: what is counted, e.g. `mmib annotate` (the first word of each line).
        total: the expected count, None when unknown, or a function returning it (or None).
        enabled: False shows nothing (`--no-progress`).
        interval: seconds between log lines when stderr is not a terminal.
        unit: what is counted, for the log lines.
    """

    HEARTBEAT = 30.0

    def __init__(self, description: str, *, total: Total = None, enabled: bool = True, interval: float = 5.0,
                 unit: str = "posts") -> None:
        self.description = description
        self.total: int | None = total if isinstance(total, int) else None
        self._total_source = total if callable(total) else None
        self.count = 0
        self.enabled = enabled
        self.interval = interval
        self.unit = unit
        self._bar: Any = None
        self._task: Any = None
        self._start = time.monotonic()
        self._log = logging.getLogger("mmib_cli.progress")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "Progress":
        self._start = time.monotonic()
        if not self.enabled:
            return self
        if sys.stderr.isatty():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TaskProgressColumn,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TaskProgressColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn(), transient=True, refresh_per_second=2)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total)
        else:
            self._spawn(self._tick, "mmib-progress")
        if self._total_source is not None:
            self._spawn(self._count_total, "mmib-progress-total")
        return self

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _count_total(self) -> None:
        try:
            total = self._total_source() if self._total_source is not None else None
        except Exception:  # noqa: BLE001 - a total is a nicety: without one the progress shows counts only
            self._log.debug("counting the total failed", exc_info=True)
            return
        if total is not None:
            self.set_total(total)

    def set_total(self, total: int) -> None:
        """Set (or correct) the expected count."""
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def advance(self, n: int = 1) -> None:
        """Count `n` more done."""
        self.count += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n)

    def iterate(self, items: Iterable[T]) -> Iterator[T]:
        """Yield `items`, counting each one."""
        for item in items:
            yield item
            self.advance()

    def line(self) -> str:
        """The progress as one line: `mmib annotate: 480/2,000 posts (24%), 12.6 posts/s, 0:38 elapsed, ETA 2:01`."""
        elapsed = time.monotonic() - self._start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        text = f"{self.description}: {self.count:,}"
        if self.total:
            text += f"/{self.total:,} {self.unit} ({100 * self.count / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.1f} {self.unit}/s, {_clock(elapsed)} elapsed"
        if self.total and rate > 0 and self.count < self.total:
            text += f", ETA {_clock((self.total - self.count) / rate)}"
        return text

    def _tick(self) -> None:
        logged_count, logged_at = 0, time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            if self.count != logged_count or now - logged_at >= self.HEARTBEAT:
                self._log.info("%s", self.line())
                logged_count, logged_at = self.count, now

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.name == "mmib-progress":
                thread.join(timeout=1.0)
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
