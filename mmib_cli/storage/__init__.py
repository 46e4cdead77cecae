"""Where checkpoints come from and how they lie on disk: the format (config.json, safetensors, bundle.json), the registry of named models, resolving `--model` (name, directory, hub id), hub
downloads through huggingface_hub and sha256 verification. Knows files, not models (see `mmib_cli.checkpoint`).

Importing this package is cheap (huggingface_hub is imported by the functions that need it).
"""
from __future__ import annotations

from mmib_cli.storage.format import checkpoint_files, load_state, read_bundle, read_config, save_state, write_bundle
from mmib_cli.storage.download import default_cache_dir, download_checkpoint, hub_endpoint
from mmib_cli.storage.registry import CheckpointSpec, get_spec, load_registry, models_dir, registry_path
from mmib_cli.storage.resolve import ResolvedModel, resolve_model, split_revision
from mmib_cli.storage.verify import sha256_file, verify_files

__all__ = ["CheckpointSpec", "ResolvedModel", "checkpoint_files", "load_state", "read_bundle", "read_config",
           "save_state", "write_bundle", "default_cache_dir", "download_checkpoint", "get_spec", "hub_endpoint",
           "load_registry", "models_dir", "registry_path", "resolve_model", "sha256_file", "split_revision",
           "verify_files"]
