"""sha256 integrity checks of checkpoint files against the hashes a registry entry promises."""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from mmib_cli.errors import ChecksumMismatch, InvalidCheckpoint

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20  # 1 MiB
MEMO_MIN_BYTES = 1 << 16
"""Files at least this large are hashed once per process (`sha256_file`); smaller ones cost nothing to rehash."""
_memo: dict[tuple[str, int, int, int, int, int], str] = {}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (follows symlinks, as in the hub cache).

    A run resolves its model more than once (checked before loading, then loaded; the text encoder's weights by each
    part of a bundle), so the digest of a file of `MEMO_MIN_BYTES` or more is remembered for this process, keyed by
    its real path, device, inode, size and modification and change times: a file rewritten since is hashed again.

    Args:
        path: the file.

    Returns:
        64 lowercase hex digits.
    """
    real = os.path.realpath(path)
    info = os.stat(real)
    key = (real, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if key in _memo:
        return _memo[key]
    digest = hashlib.sha256()
    with open(real, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    if info.st_size >= MEMO_MIN_BYTES:
        _memo[key] = digest.hexdigest()
    return digest.hexdigest()


def safe_relpath(relpath: str) -> PurePosixPath:
    """Validate a '/'-separated path relative to a checkpoint directory (no absolute path, no '..').

    Args:
        relpath: e.g. "model.safetensors" or "ner/config.json".

    Returns:
        The path as a PurePosixPath.

    Raises:
        ValueError: the path is empty, absolute or leaves the directory.
    """
    path = PurePosixPath(relpath)
    if not relpath or path.is_absolute() or ".." in path.parts or "\\" in relpath:
        raise ValueError(f"file path {relpath!r} must be relative to the checkpoint directory, without '..'")
    return path


def verify_files(
    directory: str | Path,
    expected: Mapping[str, str],
    *,
    name: str | None = None,
    remedy: str | None = None,
) -> None:
    """Check that every listed file exists under `directory` with the expected sha256.

    Args:
        directory: the checkpoint directory.
        expected: relative path ('/'-separated) → sha256 hex.
        name: the model name the user asked for, used in the suggested command `mmib --online download NAME --force`.
        remedy: a sentence replacing that suggested command (e.g. for checkpoints shipped in the package).

    Raises:
        ChecksumMismatch: a file's sha256 differs (message: file, expected, actual, command to re-download).
        InvalidCheckpoint: a listed file is missing.
    """
    directory = Path(directory)
    if remedy is None:
        target = name if name is not None else str(directory)
        remedy = f"Re-download it with: mmib --online download {target} --force"
    for relpath, want in sorted(expected.items()):
        path = directory.joinpath(*safe_relpath(relpath).parts)
        if not path.is_file():
            raise InvalidCheckpoint(f"checkpoint file {path} is missing (listed in the registry). {remedy}")
        actual = sha256_file(path)
        if actual != want.lower():
            raise ChecksumMismatch(
                f"sha256 mismatch for {path}: expected {want.lower()}, got {actual}; the file is corrupted or was "
                f"modified. {remedy}"
            )
        logger.debug("sha256 ok: %s", path)
