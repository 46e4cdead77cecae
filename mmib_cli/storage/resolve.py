"""`--model` value → a verified local checkpoint directory.

Resolution order: an existing local directory, then a registry name (embedded in the package, or downloaded from
the hub and checked against the registry's sha256s), then a hub id `org/name[@revision]`.
"""
from __future__ import annotations

import difflib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from mmib_cli._version import __version__
from mmib_cli.storage.download import download_checkpoint
from mmib_cli.storage.format import BUNDLE_NAME, CONFIG_NAME, read_bundle
from mmib_cli.storage.registry import CheckpointSpec, load_registry
from mmib_cli.storage.verify import verify_files
from mmib_cli.errors import CheckpointNotFound, InvalidCheckpoint
from mmib_cli.storage.split_archive import check_encoder_installed

logger = logging.getLogger(__name__)

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
LOCAL_REVISION = "local"


@dataclass(frozen=True)
class ResolvedModel:
    """A checkpoint ready to load.

    Attributes:
        path: checkpoint or bundle directory.
        name: registry name, hub repo id, or directory name (for output records).
        revision: the requested revision, else the checkpoint's `mmib_version` (local/embedded) or commit hash (hub).
    """

    path: Path
    name: str
    revision: str

    @property
    def label(self) -> str:
        """`name@revision`, the `model` field of output records."""
        return f"{self.name}@{self.revision}"


def split_revision(spec: str) -> tuple[str, str | None]:
    """Split `name@revision` (the revision may contain '/', e.g. `refs/pr/1`).

    Args:
        spec: e.g. "org/name@v1.0" or "mmib-default".

    Returns:
        (name, revision or None).

    Raises:
        CheckpointNotFound: an empty name or revision around '@'.
    """
    name, sep, revision = spec.partition("@")
    if sep and (not name or not revision):
        raise CheckpointNotFound(f"model {spec!r}: expected NAME@REVISION with both parts non-empty")
    return name, (revision if sep else None)


def _checkpoint_version(directory: Path) -> str | None:
    """`mmib_version` from config.json (for a bundle: from its first component), if present."""
    try:
        bundle = read_bundle(directory)
        config_dir = next(iter(bundle.values())) if bundle else directory
        config = json.loads((config_dir / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError, InvalidCheckpoint):
        return None  # an invalid config is reported by the loader, which validates it
    version = config.get("mmib_version") if isinstance(config, dict) else None
    return str(version) if version else None


def _check_layout(directory: Path, what: str) -> None:
    """An mmib checkpoint or bundle whose base text encoders are installed (a missing optional extra fails here,
    before anything is loaded or read, with the command that installs it)."""
    if not (directory / CONFIG_NAME).is_file() and not (directory / BUNDLE_NAME).is_file():
        raise InvalidCheckpoint(
            f"{what} ({directory}) is not an mmib checkpoint: it has neither {CONFIG_NAME} nor {BUNDLE_NAME}"
        )
    for text_encoder in _text_encoders(directory):
        check_encoder_installed(text_encoder, f"{what} ({directory})")


def _text_encoders(directory: Path) -> list[dict]:
    """The `text_encoder` specs of a checkpoint's (or bundle's) configs; unreadable configs are left to the loader."""
    try:
        parts = list((read_bundle(directory) or {"model": directory}).values())
    except (OSError, ValueError, InvalidCheckpoint):
        return []
    specs = []
    for part in parts:
        try:
            config = json.loads((Path(part) / CONFIG_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue
        spec = config.get("text_encoder") if isinstance(config, dict) else None
        if isinstance(spec, dict):
            specs.append(spec)
    return specs


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~", "\\")) or "\\" in spec or spec.count("/") > 1 or ":" in spec


def _close_directory(path: Path) -> str:
    """`" (did you mean DIR?)"` when a sibling directory's name is close to a missing `path`'s, else ``""``."""
    try:
        siblings = [entry.name for entry in path.parent.iterdir() if entry.is_dir()]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.6)
    return f" (did you mean {path.parent / close[0]}?)" if close else ""


def _resolve_registry(
    spec: CheckpointSpec,
    revision: str | None,
    *,
    cache_dir: str | Path | None,
    token: str | None,
    online: bool | None,
) -> ResolvedModel:
    if not spec.shipped:
        raise CheckpointNotFound(
            f"registry model {spec.name!r} is listed but not shipped in mmib {__version__}: {spec._docs} "
            "(see `mmib models`)"
        )
    if spec.source == "embedded":
        directory = spec.checkpoint_dir()
        if not directory.is_dir():
            raise CheckpointNotFound(
                f"registry model {spec.name!r} should ship with mmib at {directory}, which is missing; reinstall "
                "mmib (pip install --force-reinstall mmib) or pass a checkpoint directory or hub id to --model"
            )
        if not spec.files:
            logger.warning("registry model %s lists no file hashes: its files are not verified", spec.name)
        verify_files(
            directory,
            spec.files,
            name=spec.name,
            remedy="The packaged model is damaged; reinstall mmib (pip install --force-reinstall mmib).",
        )
        _check_layout(directory, f"registry model {spec.name!r}")
        shipped = spec.revision or _checkpoint_version(directory) or LOCAL_REVISION
        if revision is not None and revision != shipped:
            raise CheckpointNotFound(
                f"registry model {spec.name!r} ships revision {shipped!r} only, not {revision!r}; drop the revision"
            )
        return ResolvedModel(directory, spec.name, shipped)
    assert spec.repo_id is not None and spec.revision is not None  # validated by the registry loader
    if revision is not None and revision != spec.revision:
        raise CheckpointNotFound(
            f"registry model {spec.name!r} is pinned to revision {spec.revision!r} of {spec.repo_id}; to use "
            f"revision {revision!r}, pass --model {spec.repo_id}@{revision} (not checked against the registry)"
        )
    snapshot = download_checkpoint(
        spec.repo_id, revision=spec.revision, cache_dir=cache_dir, token=token, online=online, name=spec.name
    )
    if not spec.files:
        logger.warning("registry model %s lists no file hashes: its files are not verified", spec.name)
    verify_files(snapshot, spec.files, name=spec.name)
    _check_layout(snapshot, f"registry model {spec.name!r}")
    return ResolvedModel(snapshot, spec.name, spec.revision)


def resolve_model(
    spec: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    online: bool | None = None,
) -> ResolvedModel:
    """Turn a `--model` value into a local, verified checkpoint directory.

    Args:
        spec: a checkpoint directory, a registry name, or a hub id `org/name[@revision]`.
        revision: overrides the `@revision` suffix (hub ids); must match the pinned revision of registry entries.
        cache_dir: hub cache directory (default: HF_HUB_CACHE / HF_HOME).
        token: hub token (default: HF_TOKEN or the saved login).
        online: True/False overrides the offline policy (`mmib_cli.offline.is_offline()`); None follows it.

    Returns:
        ResolvedModel(path, name, revision).

    Raises:
        CheckpointNotFound: nothing matches, or the hub has no such repo/revision.
        ChecksumMismatch: a file differs from the registry's sha256.
        OfflineUnavailable: offline and not cached (the message has the command that fetches it).
        HubAccessDenied: the hub refused access (token).
        InvalidCheckpoint: the directory is not an mmib checkpoint, or the registry is malformed.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        if revision is not None:
            logger.warning("--revision %s ignored: %s is a local directory", revision, path)
        _check_layout(path, "model directory")
        return ResolvedModel(path, path.resolve().name, _checkpoint_version(path) or LOCAL_REVISION)
    if path.exists():
        raise CheckpointNotFound(f"--model {text}: is a file; expected a checkpoint directory")
    base, at_revision = split_revision(text)
    wanted = revision if revision is not None else at_revision
    registry = load_registry()
    if base in registry:
        return _resolve_registry(registry[base], wanted, cache_dir=cache_dir, token=token, online=online)
    if _looks_like_path(text) or not HUB_ID_RE.match(base):
        if "/" in text or _looks_like_path(text):
            raise CheckpointNotFound(
                f"--model {text}: no such directory{_close_directory(path)}, and not a hub id of the form "
                "org/name[@revision]"
            )
        known = ", ".join(sorted(registry)) or "none"
        close = difflib.get_close_matches(base, list(registry), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise CheckpointNotFound(
            f"--model {text}: {hint}not a directory, not a registry name (known: {known}; see `mmib models`), "
            "and not a hub id of the form org/name[@revision]"
        )
    snapshot = download_checkpoint(base, revision=wanted, cache_dir=cache_dir, token=token, online=online)
    _check_layout(snapshot, f"hub repo {base}")
    return ResolvedModel(snapshot, base, wanted or snapshot.name)


def fetch_model(
    spec: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    force: bool = False,
    online: bool | None = None,
) -> ResolvedModel:
    """`mmib download`: make a checkpoint available locally (download hub snapshots, verify embedded ones).

    Args:
        spec: registry name or hub id `org/name[@revision]` (a local directory is only checked).
        revision: overrides the `@revision` suffix.
        cache_dir: hub cache directory.
        token: hub token.
        force: download again even if cached.
        online: True/False overrides the offline policy.

    Returns:
        The resolved, verified checkpoint.
    """
    base, at_revision = split_revision(str(spec))
    registry = load_registry()
    if force and base not in registry and not Path(str(spec)).expanduser().is_dir():
        wanted = revision if revision is not None else at_revision
        snapshot = download_checkpoint(base, revision=wanted, cache_dir=cache_dir, token=token, force=True,
                                       online=online)
        _check_layout(snapshot, f"hub repo {base}")
        return ResolvedModel(snapshot, base, wanted or snapshot.name)
    if force and base in registry and registry[base].source == "hub":
        entry = registry[base]
        download_checkpoint(entry.repo_id, revision=entry.revision, cache_dir=cache_dir, token=token, force=True,
                            online=online, name=entry.name)
    return resolve_model(spec, revision=revision, cache_dir=cache_dir, token=token, online=online)
