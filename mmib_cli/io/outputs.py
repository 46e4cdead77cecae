"""Reading mmib's own output files back (report, export): every line as a dict, unreadable lines as error dicts."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmib_cli.io.jsonl import read_lines
from mmib_cli.io.records import ErrorRecord, SkippedRecord

__all__ = ["read_output"]


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
