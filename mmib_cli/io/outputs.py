"""Reading mmib's own output files back (report, export): every line as a dict, unreadable lines as error dicts."""
from __future__ import annotations

from collections.abc import Iterator
import logging
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mmib_cli.errors import UsageError
from mmib_cli.io.jsonl import read_lines
from mmib_cli.io.records import ErrorRecord, SkippedRecord

__all__ = ["OUTPUT_MARKS", "OutputTally", "field_mapping", "field_objects", "field_offset", "field_score",
           "read_output"]

OUTPUT_MARKS = ("entities", "bio", "relations", "error", "skipped")
"""Keys of which an annotate/relations output record has at least one (an input post has none of them)."""


def read_output(path: str | Path, *, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Yield the records of an annotation output in file order, up to input line `limit`.

    A line that is not a JSON object becomes an error record dict (`{"id", "line", "error"}`), never an exception,
    so a damaged file is still shown or exported in full.
    """
    for number, value in read_lines(path):
        if limit is not None and number > limit:
            return
        if isinstance(value, SkippedRecord):  # a blank line: not a record of the output
            continue
        yield value.to_json() if isinstance(value, ErrorRecord) else value


logger = logging.getLogger(__name__)


class OutputTally:
    """Counts, while report/export read a file, how many records are annotation output records at all, so a raw
    input given by mistake (`mmib report posts.jsonl`) is an error that says so, not an empty page."""

    def __init__(self) -> None:
        self.records = 0
        self.outputs = 0
        self.keys: dict[str, None] = {}

    def watch(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Yield `records`, counting each one."""
        for record in records:
            self.see(record)
            yield record

    def see(self, record: dict[str, Any]) -> None:
        """Count one record."""
        self.records += 1
        if any(key in record for key in OUTPUT_MARKS):
            self.outputs += 1
        elif len(self.keys) < 20:
            self.keys.update(dict.fromkeys(map(str, record)))

    def check(self, path: str, command: str) -> None:
        """Refuse a file none of whose records is an output record; warn when only some are not.

        Raises:
            UsageError: records were read and none is an annotation output record.
        """
        if self.records and not self.outputs:
            keys = ", ".join(map(repr, list(self.keys)[:10])) or "none"
            raise UsageError(
                f"input {path} is not an mmib annotate output: none of its {self.records} records has "
                f"{', '.join(OUTPUT_MARKS[:-1])} or {OUTPUT_MARKS[-1]} (keys: {keys}); annotate it first: mmib "
                f"annotate {shlex.quote(path)} -o out.jsonl, then mmib {command} out.jsonl")
        if self.records > self.outputs:
            logger.warning("%s: %d of %d records are not annotate output records (none of %s): shown as posts "
                           "without entities", path, self.records - self.outputs, self.records,
                           ", ".join(OUTPUT_MARKS))


# A hand-edited or concatenated output may hold anything in any field: readers of outputs take fields through these.
def field_mapping(value: Any) -> dict[str, Any]:
    """`value` when it is an object, else an empty one."""
    return value if isinstance(value, dict) else {}


def field_objects(value: Any) -> list[dict[str, Any]]:
    """The objects of `value` when it is a list (anything else in it left out), else an empty list."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def field_offset(value: Any) -> int | None:
    """`value` when it is an integer character offset (not a bool, not negative), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def field_score(value: Any) -> float | None:
    """`value` as a float when it is a number in [0, 1] (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        return None
    return float(value)
