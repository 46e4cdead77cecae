"""Checkpoint directories on disk: config.json + model.safetensors (+ README.md), bundles, file hashes.

Generic: knows nothing about the model classes. Loading is safetensors-only; pickle files are refused.
"""
from __future__ import annotations

import io
import json
import logging
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmib_cli.storage.verify import sha256_file
from mmib_cli.errors import InvalidCheckpoint
from mmib_cli.io.safefile import write_atomic

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
BUNDLE_NAME = "bundle.json"
BUNDLE_FORMAT = "mmib-bundle"
BUNDLE_COMPONENTS = ("ner", "re")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def _temporary(path: Path) -> Path:
    """A fresh temporary name next to `path` (created by `io.safefile.open_new`: O_EXCL, never through a link)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def atomic_write(path: str | Path, data: bytes | str | Any) -> None:
    """Write a checkpoint or training file through a new temporary file renamed over `path` (`io.safefile`).

    Args:
        path: the final name (a link planted there is replaced, its target never written).
        data: bytes, text (UTF-8), or a function writing to a binary file object (`torch.save`).
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    write_atomic(path, payload, temporary=_temporary(path), mode=0o666)  # 0666 less the umask, as open() gives


def _atomic_write(path: Path, write: Any) -> None:
    """Write text through `write(handle)` atomically (see `atomic_write`)."""
    buffer = io.StringIO()
    write(buffer)
    atomic_write(path, buffer.getvalue())


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    _atomic_write(path, lambda handle: handle.write(text))


def save_state(
    directory: str | Path,
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | str | None = None,
    card: str | None = None,
) -> None:
    """Write a checkpoint directory: `config.json`, `model.safetensors` and optionally `README.md`.

    Args:
        directory: created if needed; existing files of the same names are replaced atomically.
        config: JSON-serialisable configuration (written with indent 2, sorted keys).
        state_dict: name → tensor; tensors are moved to CPU, made contiguous, and de-aliased (tied weights are
            stored once per name).
        dtype: cast floating tensors to this dtype (e.g. torch.float16) to halve the file; None keeps them.
        card: model card text for README.md; None writes none.

    Raises:
        TypeError: config is not JSON-serialisable or a value is not a tensor.
    """
    import torch
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    from mmib_cli.device import torch_dtype

    target = None if dtype is None else torch_dtype(dtype)
    config_text = json.dumps(dict(config), indent=2, sort_keys=True, ensure_ascii=False) + "\n"  # fail before writing
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict[{name!r}] is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().to("cpu")
        if target is not None and tensor.is_floating_point():
            tensor = tensor.to(target)
        tensor = tensor.contiguous()
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if key in seen and tensor.numel() > 0:
            tensor = tensor.clone()  # safetensors refuses tensors sharing memory
        seen.add((tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()))
        tensors[name] = tensor
    atomic_write(directory / CONFIG_NAME, config_text)
    # serialised in memory and written to a file this run created: safetensors' save_file would open a path by
    # name, through whatever link sits there by then
    atomic_write(directory / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    if card is not None:
        _atomic_write(directory / CARD_NAME, lambda handle: handle.write(card))
    logger.debug("saved %d tensors to %s", len(tensors), directory)


def read_config(directory: str | Path) -> dict[str, Any]:
    """Read `config.json` of a checkpoint directory.

    Args:
        directory: the checkpoint directory.

    Returns:
        The config dict.

    Raises:
        InvalidCheckpoint: the file is missing or not a JSON object.
    """
    path = Path(directory) / CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidCheckpoint(f"{path} is missing: {directory} is not an mmib checkpoint directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidCheckpoint(f"invalid checkpoint {directory}: {path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidCheckpoint(f"invalid checkpoint {directory}: {path} is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidCheckpoint(f"invalid checkpoint {directory}: {path} must hold a JSON object, "
                                f"got {type(data).__name__}")
    return data


def update_config(directory: str | Path, values: Mapping[str, Any]) -> dict[str, Any]:
    """Set some keys of a checkpoint's config.json (atomically); returns the new config.

    Raises:
        InvalidCheckpoint: see `read_config`.
    """
    config = {**read_config(directory), **values}
    _write_json(Path(directory) / CONFIG_NAME, config)
    return config


def load_state(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a checkpoint directory written by `save_state` (safetensors only, never pickle).

    Args:
        directory: the checkpoint directory.

    Returns:
        (config, state_dict) with tensors on CPU; floating tensors are returned as float32.

    Raises:
        InvalidCheckpoint: config.json or model.safetensors is missing or unreadable, or the directory only holds
            pickle weights (pytorch_model.bin, *.pt), which mmib refuses to load.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidCheckpoint(f"checkpoint directory {directory} does not exist")
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise InvalidCheckpoint(
                f"{directory} holds only pickle weights ({', '.join(pickles)}) and no {WEIGHTS_NAME}: mmib loads "
                "safetensors only, because unpickling a file can run arbitrary code. Convert it where you trust the "
                "file (torch.load, then mmib_cli.storage.format.save_state) or use a safetensors checkpoint."
            )
        raise InvalidCheckpoint(f"{weights} is missing: {directory} is not a complete mmib checkpoint")
    config = read_config(directory)
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InvalidCheckpoint(f"{weights} cannot be read as safetensors ({exc})") from None
    state = {
        name: tensor.to(torch.float32) if tensor.is_floating_point() and tensor.dtype != torch.float32 else tensor
        for name, tensor in tensors.items()
    }
    return config, state


def write_bundle(
    directory: str | Path, components: Mapping[str, str | Path], *, card: str | None = None
) -> None:
    """Write an annotation bundle: `<directory>/<component>/` checkpoints plus `bundle.json` (and README.md).

    Args:
        directory: the bundle directory (created if needed).
        components: component name ("ner", "re") → checkpoint directory; copied to `<directory>/<name>` unless it
            already is that directory.
        card: bundle model card text for README.md; None writes none.

    Raises:
        ValueError: an unknown component name or no component at all.
        InvalidCheckpoint: a component directory does not exist.
    """
    directory = Path(directory)
    unknown = sorted(set(components) - set(BUNDLE_COMPONENTS))
    if unknown or not components:
        raise ValueError(f"bundle components must be among {BUNDLE_COMPONENTS}, got {sorted(components)}")
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in components.items():
        source, target = Path(source), directory / name
        if not source.is_dir():
            raise InvalidCheckpoint(f"bundle component {name!r}: {source} is not a directory")
        if source.resolve() != target.resolve():
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(source, target)
    _write_json(directory / BUNDLE_NAME, {"format": BUNDLE_FORMAT, **{name: name for name in components}})
    if card is not None:
        _atomic_write(directory / CARD_NAME, lambda handle: handle.write(card))


def read_bundle(directory: str | Path) -> dict[str, Path] | None:
    """Read `bundle.json` of a bundle directory.

    Args:
        directory: a checkpoint or bundle directory.

    Returns:
        component name → sub-checkpoint directory, or None when `directory` is not a bundle (no bundle.json).

    Raises:
        InvalidCheckpoint: bundle.json is malformed or names a missing or escaping sub-directory.
    """
    directory = Path(directory)
    path = directory / BUNDLE_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidCheckpoint(f"invalid checkpoint {directory}: {path} is not valid JSON "
                                f"({exc or 'nested too deeply'})") from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise InvalidCheckpoint(f"{path} must be a JSON object with \"format\": \"{BUNDLE_FORMAT}\"")
    result: dict[str, Path] = {}
    root = directory.resolve()
    for name in BUNDLE_COMPONENTS:
        if name not in data:
            continue
        sub = data[name]
        target = (directory / sub).resolve() if isinstance(sub, str) and sub else None
        if target is None or (root not in target.parents):
            raise InvalidCheckpoint(f"{path}: {name!r} must name a sub-directory of the bundle, got {sub!r}")
        if not target.is_dir():
            raise InvalidCheckpoint(f"{path}: component {name!r} directory {directory / sub} is missing")
        result[name] = directory / sub
    if not result:
        raise InvalidCheckpoint(f"{path} names no component (expected keys among {BUNDLE_COMPONENTS})")
    return result


def checkpoint_files(directory: str | Path) -> dict[str, str]:
    """sha256 of every file of a checkpoint directory, for a registry entry's `files`.

    Hidden files and directories (names starting with '.') are skipped.

    Args:
        directory: a checkpoint or bundle directory.

    Returns:
        relative '/'-separated path → sha256 hex, sorted by path.

    Raises:
        InvalidCheckpoint: a file cannot be read.
    """
    directory = Path(directory)
    found: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        try:
            found[rel.as_posix()] = sha256_file(path)
        except OSError as exc:  # an unreadable file (permissions, an I/O error, a link into /proc)
            raise InvalidCheckpoint(f"cannot read checkpoint file {path}: {exc.strerror or exc}") from None
    return found
