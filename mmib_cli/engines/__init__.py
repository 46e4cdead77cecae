"""Engines: where a run's posts are annotated. An engine receives a checked `runs.RunOptions` (what the run is) and
only schedules the work; every engine gives the same lines.

Each engine is one module of this package that registers its runner with `@engine(Engine.X)`; `execute` imports
them (so a third engine is one module and one import line here) and hands the run to the one it names.
"""
from __future__ import annotations

from typing import Any, Callable

from mmib_cli.choices import Engine
from mmib_cli.runs.plan import RunOptions
from mmib_cli.storage.model_info import ModelInfo
from mmib_cli.runs.summary import RunSummary

Runner = Callable[[RunOptions, Any, ModelInfo], RunSummary]
ENGINES: dict[Engine, Runner] = {}


def engine(kind: Engine) -> Callable[[Runner], Runner]:
    """Register the decorated function as the runner of `kind`: `runner(opts, engine_options, model) -> RunSummary`
    (`model`: the `ModelInfo` preflight resolved; the runner trusts the plan and the model as they are)."""
    def register(runner: Runner) -> Runner:
        ENGINES[kind] = runner
        return runner
    return register


def execute(opts: RunOptions, engine_options: Any = None) -> RunSummary:
    """Run `opts` on its engine.

    Args:
        opts: the checked run options (`RunOptions.from_cli`).
        engine_options: what only that engine takes (`engines.ray.RayOptions` for Ray), or None.

    Raises:
        MMIBError: a usage error, an output that cannot be written, a model that cannot be resolved (found before
            any engine, and torch, is imported: `runs.preflight`), or the engine's own fatal errors.

    Returns:
        The run summary; its `exit_code` is the process exit code.
    """
    from mmib_cli.runs.preflight import preflight

    model = preflight(opts)  # every usage error before the engine, and torch, is imported
    from mmib_cli.engines import local, ray  # noqa: F401 - each registers its runner

    return ENGINES[opts.engine](opts, engine_options, model)
