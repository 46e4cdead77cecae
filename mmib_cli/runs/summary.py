"""Counting a run's output records, its exit code and its one-line summary (torch-free, shared by every engine)."""
from __future__ import annotations

import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mmib_cli.errors import ExitCode

logger = logging.getLogger("mmib_cli.runs")

COUNTS = ("posts", "annotated", "entities", "relations", "errors", "skipped")
"""The additive counters of a summary (what a Ray shard writer sends back)."""


@dataclass
class RunSummary:
    """Counts of one run; `exit_code` is 0, 3 (some error records, kept ones of a resumed output included) or
    130/143 (interrupted), so a resumed run exits as the uninterrupted run would."""

    posts: int = 0
    annotated: int = 0
    entities: int = 0
    relations: int = 0
    errors: int = 0
    skipped: int = 0
    resumed: int = 0
    kept_errors: int = 0  # error records among the `resumed` lines
    seconds: float = 0.0
    exit_code: ExitCode = ExitCode.OK
    error_types: dict[str, int] = field(default_factory=dict)

    def count(self, record: Mapping[str, Any]) -> None:
        """Count one output record (an annotated post, an error record or a `skipped` line)."""
        self.posts += 1
        if "error" in record:
            self.errors += 1
            kind = str(record["error"].get("type", "Error"))
            self.error_types[kind] = self.error_types.get(kind, 0) + 1
        elif "skipped" in record:
            self.skipped += 1
        else:
            self.annotated += 1
            self.entities += len(record.get("entities", []))
            self.relations += len(record.get("relations", []) or [])

    def counts(self) -> dict[str, Any]:
        """The additive counters as a JSON-able dict (see `merge`)."""
        return {key: getattr(self, key) for key in COUNTS} | {"error_types": dict(self.error_types)}

    def merge(self, counts: Mapping[str, Any]) -> None:
        """Add the `counts()` of another part of the run (a Ray shard)."""
        for key in COUNTS:
            setattr(self, key, getattr(self, key) + int(counts[key]))
        for kind, n in counts["error_types"].items():
            self.error_types[kind] = self.error_types.get(kind, 0) + int(n)

    def interrupted(self, signum: int) -> None:
        """Mark the run as stopped by SIGINT (exit 130) or SIGTERM (exit 143)."""
        self.exit_code = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED

    def finish(self, seconds: float) -> RunSummary:
        """Set the duration and the exit code (3 when some lines became error records), log the summary."""
        self.seconds = seconds
        if self.exit_code == ExitCode.OK and (self.errors or self.kept_errors):
            self.exit_code = ExitCode.PARTIAL
        # `-o - | head -1`: the reader has what it wanted, so the run ends as quietly as a pipe does (-v shows it)
        logger.log(logging.DEBUG if self.exit_code == ExitCode.BROKEN_PIPE else logging.INFO, "%s", self.line())
        if self.error_types:
            counts = ", ".join(f"{k}={v}" for k, v in sorted(self.error_types.items()))
            logger.warning("error records by type: %s", counts)
        return self

    def line(self) -> str:
        """`N posts (A annotated, E errors, S skipped), ... in Ts (R posts/s)`."""
        rate = self.posts / self.seconds if self.seconds > 0 else 0.0
        text = (f"{self.posts} posts ({self.annotated} annotated, {self.errors} errors, {self.skipped} skipped), "
                f"{self.entities} entities, {self.relations} relations in {self.seconds:.1f}s ({rate:.1f} posts/s)")
        if self.resumed:
            text += f"; {self.resumed} lines already done before --resume"
            if self.kept_errors:
                text += f" ({self.kept_errors} of them error records)"
        return text
