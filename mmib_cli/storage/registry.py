"""The model registry: `models/registry.json` (shipped as package data `mmib_cli._models`) → CheckpointSpec.

File layout::

    {"format": "mmib-registry", "version": 1,
     "models": {"mmib-default": {"source": "embedded", "path": "mmib-default", "revision": null,
                                 "files": {"config.json": "<sha256>", ...}, "num_params": 123,
                                 "_metrics": {"twitter2017": {"entity_f1": 0.5}}, "license": "...",
                                 "recipe": "...", "_docs": "...", "card": "README.md"}}}

`source` is "embedded" (a directory shipped in the package, `path` relative to the registry file's directory) or
"hub" (`repo_id` downloaded at the pinned `revision`). `MMIB_REGISTRY` overrides the registry file. Optional keys:
`"shipped": false` lists a model whose files are not in this release (resolving it fails with its `_docs`),
`"requires_extra"` names the mmib extra its base encoder needs; `"encoder"` (name, size_mb) and `"posts_per_s_cpu"`
feed `mmib models`.
"""
from __future__ import annotations

import importlib.resources
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmib_cli.storage.verify import safe_relpath
from mmib_cli.errors import CheckpointNotFound, InvalidCheckpoint

logger = logging.getLogger(__name__)

ENV_REGISTRY = "MMIB_REGISTRY"
REGISTRY_FORMAT = "mmib-registry"
REGISTRY_VERSION = 1
SOURCES = ("embedded", "hub")
REQUIRED_KEYS = ("source", "revision", "files", "num_params", "_metrics", "license", "recipe", "_docs", "card")
SOURCE_KEYS = {"embedded": ("path",), "hub": ("repo_id",)}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_KNOWN_KEYS = set(REQUIRED_KEYS) | {"path", "repo_id"}


@dataclass(frozen=True)
class CheckpointSpec:
    """One registry entry (torchvision-meta style).

    Attributes:
        name: registry name, e.g. "mmib-default" (no '/' or '@').
        source: "embedded" (shipped in the package) or "hub".
        repo_id: hub repo "org/name" (hub entries), else None.
        revision: pinned hub revision (required for hub entries; None for embedded → config's mmib_version).
        path: embedded entries: directory relative to the registry file's directory, else None.
        files: relative path ('/'-separated) → sha256 hex, verified before use.
        num_params: parameter count of the model, None until known.
        _metrics: dataset → metric → value.
        license: SPDX id or licence text.
        recipe: how the checkpoint was trained (URL or command).
        _docs: human description.
        card: model card file inside the checkpoint (usually "README.md"), or None.
        base_dir: directory of the registry file (resolves `path`).
        extra: keys of the entry not listed above, kept as they are.
    """

    name: str
    source: str
    repo_id: str | None = None
    revision: str | None = None
    path: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    num_params: int | None = None
    _metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    license: str | None = None
    recipe: str | None = None
    _docs: str | None = None
    card: str | None = None
    base_dir: Path | None = field(default=None, compare=False, repr=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def shipped(self) -> bool:
        """False for an entry marked `"shipped": false` (listed, but its files are not in this release)."""
        return self.extra.get("shipped", True) is not False

    def checkpoint_dir(self) -> Path:
        """Directory of an embedded checkpoint.

        Returns:
            `base_dir / path`.

        Raises:
            ValueError: the entry is not embedded.
        """
        if self.source != "embedded" or self.path is None:
            raise ValueError(f"registry entry {self.name!r} is not embedded (source {self.source!r})")
        base = self.base_dir if self.base_dir is not None else models_dir()
        return base.joinpath(*safe_relpath(self.path).parts)

    def to_dict(self) -> dict[str, Any]:
        """The entry as stored in registry.json (without `name` and `base_dir`)."""
        data = asdict(self)
        for key in ("name", "base_dir", "extra"):
            data.pop(key)
        if self.source == "embedded":
            data.pop("repo_id")
        else:
            data.pop("path")
        data.update(self.extra)
        return data


def models_dir() -> Path:
    """The directory holding registry.json and embedded checkpoints.

    Package data `mmib_cli._models` when installed; `<repo>/models` in a source checkout.

    Returns:
        The directory (may lack registry.json in a broken install).
    """
    try:
        resource = importlib.resources.files("mmib_cli._models").joinpath("registry.json")
        if resource.is_file():
            with importlib.resources.as_file(resource) as path:
                return Path(path).parent
    except (ModuleNotFoundError, TypeError, NotADirectoryError, FileNotFoundError):
        pass
    return Path(__file__).resolve().parents[2] / "models"


def registry_path() -> Path:
    """Path of the registry file in use: `$MMIB_REGISTRY` if set, else `models_dir()/registry.json`."""
    override = os.environ.get(ENV_REGISTRY)
    if override:
        return Path(override).expanduser()
    return models_dir() / "registry.json"


def _fail(where: str, message: str) -> InvalidCheckpoint:
    return InvalidCheckpoint(f"invalid model registry {where}: {message}")


def parse_entry(name: str, entry: Any, *, base_dir: Path | None = None, where: str = "") -> CheckpointSpec:
    """Validate one registry entry and build its CheckpointSpec.

    Args:
        name: the registry name.
        entry: the JSON object of the entry.
        base_dir: directory embedded paths are relative to.
        where: file name for error messages.

    Returns:
        The spec.

    Raises:
        InvalidCheckpoint: a required key is missing, the source is unknown, or a value has the wrong type.
    """
    where = f"{where} entry {name!r}"
    source = _check_shape(name, entry, where)
    _check_strings(entry, source, where)
    _check_location(entry, source, where)
    _check_files(entry["files"], where)
    _check_meta(entry, where)
    return CheckpointSpec(
        name=name,
        source=source,
        repo_id=entry.get("repo_id") if source == "hub" else None,
        revision=entry["revision"],
        path=entry.get("path") if source == "embedded" else None,
        files=dict(entry["files"]),
        num_params=entry["num_params"],
        _metrics={dataset: dict(values) for dataset, values in entry["_metrics"].items()},
        license=entry["license"],
        recipe=entry["recipe"],
        _docs=entry["_docs"],
        card=entry["card"],
        base_dir=base_dir,
        extra={key: value for key, value in entry.items() if key not in _KNOWN_KEYS},
    )


def _check_shape(name: Any, entry: Any, where: str) -> str:
    """A valid name, an object with every required key and a known source; returns the source."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _fail(where, "names use letters, digits, '.', '_', '-' only (no '/' or '@', which denote hub ids)")
    if not isinstance(entry, dict):
        raise _fail(where, f"expected an object, got {type(entry).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    source = entry.get("source")
    if source not in SOURCES:
        raise _fail(where, f"unknown source {source!r}; known sources: {', '.join(SOURCES)}")
    missing += [key for key in SOURCE_KEYS[source] if key not in entry]
    if missing:
        raise _fail(where, f"missing key(s) {', '.join(missing)}")
    return source


def _check_strings(entry: dict[str, Any], source: str, where: str) -> None:
    """Descriptive keys are non-empty strings; `revision` and `card` may be null."""
    for key in (*SOURCE_KEYS[source], "license", "recipe", "_docs"):
        if not isinstance(entry[key], str) or not entry[key]:
            raise _fail(where, f"{key!r} must be a non-empty string, got {entry[key]!r}")
    for key in ("revision", "card"):
        if entry[key] is not None and (not isinstance(entry[key], str) or not entry[key]):
            raise _fail(where, f"{key!r} must be a non-empty string or null, got {entry[key]!r}")


def _check_location(entry: dict[str, Any], source: str, where: str) -> None:
    """Hub entries pin a revision of an `org/name` repo; embedded paths stay inside the registry directory."""
    if source == "hub":
        if entry["revision"] is None:
            raise _fail(where, "hub entries must pin a 'revision' (a commit hash or tag)")
        if entry["repo_id"].count("/") != 1:
            raise _fail(where, f"'repo_id' must look like 'org/name', got {entry['repo_id']!r}")
    if source == "embedded":
        try:
            safe_relpath(entry["path"])
        except ValueError as exc:
            raise _fail(where, f"'path': {exc}") from None


def _check_files(files: Any, where: str) -> None:
    """`files` maps safe relative paths to sha256 hex digests."""
    if not isinstance(files, dict):
        raise _fail(where, "'files' must map relative paths to sha256 hex digests")
    for relpath, digest in files.items():
        try:
            safe_relpath(relpath)
        except ValueError as exc:
            raise _fail(where, f"'files': {exc}") from None
        if not isinstance(digest, str) or not _SHA256_RE.match(digest):
            raise _fail(where, f"'files'[{relpath!r}] must be 64 lowercase hex digits, got {digest!r}")


def _check_meta(entry: dict[str, Any], where: str) -> None:
    """`num_params` is a count (or null) and `_metrics` maps dataset → {metric: number}."""
    if not isinstance(entry.get("shipped", True), bool):
        raise _fail(where, f"'shipped' must be true or false, got {entry['shipped']!r}")
    num_params = entry["num_params"]
    if num_params is not None and (not isinstance(num_params, int) or isinstance(num_params, bool) or num_params < 0):
        raise _fail(where, f"'num_params' must be a non-negative integer or null, got {num_params!r}")
    metrics = entry["_metrics"]
    if not isinstance(metrics, dict) or not all(
        isinstance(values, dict)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values())
        for values in metrics.values()
    ):
        raise _fail(where, "'_metrics' must map dataset → {metric: number}")


def load_registry(path: str | Path | None = None) -> dict[str, CheckpointSpec]:
    """Load and validate the registry.

    Args:
        path: registry file; default `registry_path()` (`$MMIB_REGISTRY` or the packaged one).

    Returns:
        name → CheckpointSpec, in file order.

    Raises:
        InvalidCheckpoint: the file is missing, not JSON, or an entry is invalid.
    """
    path = Path(path) if path is not None else registry_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidCheckpoint(f"model registry {path} not found (set {ENV_REGISTRY} or reinstall mmib)") from None
    except json.JSONDecodeError as exc:
        raise _fail(str(path), f"not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT:
        raise _fail(str(path), f"expected a JSON object with \"format\": \"{REGISTRY_FORMAT}\"")
    if data.get("version") != REGISTRY_VERSION:
        raise _fail(str(path), f"unsupported version {data.get('version')!r} (this mmib reads {REGISTRY_VERSION})")
    models = data.get("models")
    if not isinstance(models, dict):
        raise _fail(str(path), "'models' must be an object name → entry")
    base_dir = path.resolve().parent
    return {name: parse_entry(name, entry, base_dir=base_dir, where=str(path)) for name, entry in models.items()}


def get_spec(name: str, registry: dict[str, CheckpointSpec] | None = None) -> CheckpointSpec:
    """Look up a registry entry by name.

    Args:
        name: registry name.
        registry: an already loaded registry (default: `load_registry()`).

    Returns:
        The spec.

    Raises:
        CheckpointNotFound: no entry of that name (the message lists the known names).
    """
    registry = load_registry() if registry is None else registry
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(sorted(registry)) or "none"
        raise CheckpointNotFound(
            f"no model named {name!r} in the registry (known: {known}); see `mmib models`"
        ) from None
