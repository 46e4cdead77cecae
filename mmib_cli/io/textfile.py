"""Whole-file outputs (HTML report, Label Studio tasks, CoNLL): refused when present, written through a rename."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from mmib_cli.errors import OutputExists

__all__ = ["check_writable", "write_text_output"]


def check_writable(path: str | Path, *, force: bool = False) -> None:
    """Refuse an existing output before any work is done.

    Raises:
        OutputExists: `path` exists and `force` is not set (`-` is stdout and always writable).
    """
    if str(path) != "-" and Path(path).exists() and not force:
        raise OutputExists(f"output {path} already exists: pass --force to overwrite it")


def write_text_output(path: str | Path, text: str, *, force: bool = False) -> None:
    """Write `text` to `path` (or stdout for `-`) via `path.partial` + rename, so `path` is always complete.

    Raises:
        OutputExists: `path` exists and `force` is not set.
        OSError: the file cannot be written.
    """
    check_writable(path, force=force)
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    out = Path(path)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, out)
