"""Logging to stderr, progress display and the end-of-run summary (everything meant for people)."""
from __future__ import annotations

import logging
import os
import sys
import time

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


class Progress:
    """Progress reporting: a rich bar on a TTY, a plain log line every `interval` seconds otherwise."""

    def __init__(self, description: str, *, total: int | None = None, enabled: bool = True,
                 interval: float = 30.0) -> None:
        self.description = description
        self.total = total
        self.count = 0
        self.enabled = enabled
        self.interval = interval
        self._bar = None
        self._task = None
        self._last = time.monotonic()
        self._start = time.monotonic()
        self._log = logging.getLogger("mmib_cli.progress")

    def __enter__(self) -> "Progress":
        if self.enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn
            from rich.progress import TimeElapsedColumn

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n)
        elif self.enabled and time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            rate = self.count / max(1e-9, self._last - self._start)
            of = f"/{self.total}" if self.total else ""
            self._log.info("%s: %d%s done (%.1f/s)", self.description, self.count, of, rate)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
