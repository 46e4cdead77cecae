"""Checks a run makes before the engine (and torch) is imported: every usage error within a fraction of a second.

`execute` calls `preflight` after `RunOptions.check` (which already sniffed the input): the output target is
checked as the writer will check it, and `--model` is resolved and checked for the parts the command needs, without
loading anything. The engine repeats these checks when it takes its lock (another run may have started since);
model files are hashed once per process (`checkpoint.verify.sha256_file`), so the repetition costs nothing.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from mmib_cli.errors import MMIBError, OutputExists, UsageError
from mmib_cli.runs.plan import ENGINE_TRAITS, RunOptions, is_uri
from mmib_cli.storage.model_info import ModelInfo

__all__ = ["check_output_target", "preflight"]


def check_output_target(output: str, *, force: bool = False, resume: bool = False) -> None:
    """Fail fast on an output the writer (`io.writer.AtomicJSONLWriter`) would refuse.

    Raises:
        UsageError: a directory; a name too long for its sidecar files; `--resume` into a FIFO or device.
        OutputExists: the output (or a non-empty `OUTPUT.partial`) exists, without `--force` or `--resume`.
        MMIBError: the output's folder is missing or not writable.
    """
    from mmib_cli.io.safefile import check_output_name
    from mmib_cli.io.writer import SIDECAR_SUFFIXES

    if output == "-" or is_uri(output):
        return
    target = Path(os.path.realpath(output))
    check_output_name(target, SIDECAR_SUFFIXES)
    try:
        info: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise MMIBError(f"cannot write output {output}: {exc.strerror or exc}") from exc
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise UsageError(f"output {output} is a directory: give a file name such as {Path(output) / 'out.jsonl'}")
    if info is not None and not stat.S_ISREG(info.st_mode):
        if resume:
            raise UsageError(f"--resume needs a regular output file; {output} is a FIFO or device")
        return
    folder = target.parent
    if not folder.is_dir():
        raise MMIBError(f"cannot write output {output}: its folder {folder} does not exist; create it first "
                        f"(mkdir -p {folder})")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MMIBError(f"cannot write output {output}: its folder {folder} is not writable")
    if force or resume:
        return
    if info is not None:
        raise OutputExists(f"output {target} already exists: pass --force to overwrite it or --resume to continue it")
    partial = target.with_name(target.name + ".partial")
    if partial.is_file() and partial.stat().st_size > 0:
        raise OutputExists(
            f"{partial} is left from an interrupted run: pass --resume to continue it or --force to start over")


def preflight(opts: RunOptions) -> "ModelInfo":
    """The torch-free checks of a run (see the module docstring); `opts` must be checked (`RunOptions.check`).

    Returns:
        The resolved model, which the engine uses as it is (it is not resolved again).

    Raises:
        MMIBError: see `check_output_target`; the model cannot be resolved or lacks a part the command needs.
    """
    from mmib_cli.storage.model_info import describe_model

    if ENGINE_TRAITS[opts.engine].output == "file":
        check_output_target(opts.output, force=opts.force, resume=opts.resume)
    model = describe_model(opts.model, online=opts.online)
    opts.check_tasks(model.tasks, model.label)
    return model
