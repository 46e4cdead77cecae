"""Checkpoints: registry, `--model` resolution, hub download, sha256 verification, safetensors (de)serialisation.

Importing this package is cheap (torch and huggingface_hub are imported by the functions that need them).
"""
from __future__ import annotations

from mmib_cli.checkpoint.download import default_cache_dir, download_checkpoint, hub_endpoint
from mmib_cli.checkpoint.registry import CheckpointSpec, get_spec, load_registry, models_dir, registry_path
from mmib_cli.checkpoint.resolve import ResolvedModel, resolve_model, split_revision
from mmib_cli.checkpoint.serialization import (
    checkpoint_files,
    load_state,
    read_bundle,
    read_config,
    save_state,
    write_bundle,
)
from mmib_cli.checkpoint.verify import sha256_file, verify_files

__all__ = [
    "CheckpointSpec",
    "ResolvedModel",
    "checkpoint_files",
    "default_cache_dir",
    "download_checkpoint",
    "get_spec",
    "hub_endpoint",
    "load_registry",
    "load_state",
    "models_dir",
    "read_bundle",
    "read_config",
    "registry_path",
    "resolve_model",
    "save_state",
    "sha256_file",
    "split_revision",
    "verify_files",
    "write_bundle",
]
