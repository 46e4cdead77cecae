"""One run of `mmib annotate` / `mmib relations`, independent of the engine that runs it (torch-free).

`plan` says what the run is (options, mode, line selection, settings, task check, chunking), `summary` counts its
records and gives its exit code; `execute` hands the run to its engine (`pipeline.py` locally, `distributed.py` on
Ray), which only decides where the work runs.
"""
from __future__ import annotations

import importlib
from typing import Any

from mmib_cli.runs.plan import (ENGINE_TRAITS, ChunkRule, PrepareSettings, RelationSettings, RunOptions, is_uri,
                                parse_shard)
from mmib_cli.runs.summary import RunSummary

__all__ = ["ChunkRule", "PrepareSettings", "RelationSettings", "RunOptions", "RunSummary", "execute", "is_uri",
           "parse_shard"]


def execute(opts: RunOptions, engine_options: Any = None) -> RunSummary:
    """Run `opts` on its engine.

    Args:
        opts: the checked run options (`RunOptions.from_cli`).
        engine_options: what only that engine takes (`distributed.RayOptions` for Ray), or None.

    Raises:
        MMIBError: a usage error, an output that cannot be written, a model that cannot be resolved (found before
            the engine is imported: `runs.preflight`), or the engine's own fatal errors.

    Returns:
        The run summary; its `exit_code` is the process exit code.
    """
    from mmib_cli.runs.preflight import preflight

    preflight(opts)  # every usage error before the engine, and torch, is imported
    module, _, function = ENGINE_TRAITS[opts.engine].runner.partition(":")
    runner = getattr(importlib.import_module(module), function)
    return runner(opts) if engine_options is None else runner(opts, engine_options)
