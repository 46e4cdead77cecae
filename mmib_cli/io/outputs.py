"""Reading mmib's own output files back (report, export): every line as a dict, unreadable lines as error dicts."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmib_cli.io.jsonl import read_lines
from mmib_cli.io.records import ErrorRecord, SkippedRecord

__all__ = ["field_mapping", "field_objects", "field_offset", "field_score", "read_output"]


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
