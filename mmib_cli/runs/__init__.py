"""One run of `mmib annotate` / `mmib relations`, independent of the engine that runs it (torch-free).

`plan` says what the run is (options, mode, line selection, settings, task check, chunking), `summary` counts its
records and gives its exit code; `engines.execute` hands the run to its engine (`engines/local.py`, `engines/ray.py`),
which only decides where the work runs.
"""
from __future__ import annotations

from mmib_cli.runs.plan import (ChunkRule, PrepareSettings, RelationSettings, RunOptions, is_uri,
                                parse_shard)
from mmib_cli.runs.summary import RunSummary

__all__ = ["ChunkRule", "PrepareSettings", "RelationSettings", "RunOptions", "RunSummary", "is_uri", "parse_shard"]
