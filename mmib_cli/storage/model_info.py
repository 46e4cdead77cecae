"""A resolved `--model` described once per run: its label, the task parts it holds and a digest of its files.

`runs.preflight` makes it before any engine is imported; engines, the resume check (`runs.provenance`) and loading
(`checkpoint.bundle.load_bundle`) use it as it is.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DESCRIPTIVE_FILES", "ModelInfo", "describe_model"]


@dataclass(frozen=True)
class ModelInfo:
    """A resolved `--model`: its label, the task models it holds and a digest of its files; `parts` maps each task
    to its checkpoint directory (empty for a model loaded by the caller, whose files are not known)."""

    label: str
    tasks: frozenset[str]
    digest: str
    parts: tuple[tuple[str, Path], ...] = ()


DESCRIPTIVE_FILES = frozenset({"README.md", "metrics.json", "training_args.json"})
"""Checkpoint files that describe a model without changing its output: left out of its digest, so a model card
fixed in a new release does not refuse `--resume` of an output the same weights started."""


def describe_model(model: str, *, online: bool | None = None) -> ModelInfo:
    """Resolve `--model` (without loading it) and describe it (the digest covers every file but `DESCRIPTIVE_FILES`).

    Raises:
        MMIBError: the model cannot be resolved or its config cannot be read.
    """
    from mmib_cli.storage.resolve import resolve_model
    from mmib_cli.storage.format import checkpoint_files, read_bundle, read_config

    resolved = resolve_model(model, online=online)
    paths = read_bundle(resolved.path) or {"single": resolved.path}
    parts = tuple((str(read_config(path).get("task")), Path(path)) for path in paths.values())
    files = {rel: sha for rel, sha in checkpoint_files(resolved.path).items()
             if rel.rsplit("/", 1)[-1] not in DESCRIPTIVE_FILES}
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return ModelInfo(resolved.label, frozenset(task for task, _ in parts), "sha256:" + digest, parts)
