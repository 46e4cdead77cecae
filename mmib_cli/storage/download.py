"""Hub downloads through `huggingface_hub.snapshot_download` (its cache layout, HF_HOME, HF_TOKEN, HF_ENDPOINT).

`huggingface_hub` freezes `HF_ENDPOINT`, `HF_HUB_OFFLINE` and `HF_HOME` at import; this module reads them at call
time instead, so a process (or a test) may change them after the import. Offline, nothing touches the network:
the cache is looked up with `local_files_only=True`, which fails at once when the files are not there.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mmib_cli import offline
from mmib_cli._version import __version__
from mmib_cli.errors import CheckpointNotFound, HubAccessDenied, MMIBError, OfflineUnavailable

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRANSPORT_MODULES = {"httpx", "httpx2", "httpcore", "requests", "urllib3"}  # network errors raised mid-download


def hub_endpoint() -> str:
    """The hub endpoint in use: `$HF_ENDPOINT` read now, else https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def default_cache_dir() -> Path:
    """The hub cache directory read now: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def fetch_command(repo_id: str, revision: str | None = None, *, name: str | None = None) -> str:
    """The command that downloads a model while online, for error messages.

    Args:
        repo_id: hub repo id.
        revision: revision, appended as `@REV`.
        name: the name the user typed (e.g. a registry name), used instead of `repo_id@revision`.

    Returns:
        e.g. "mmib --online download org/name@v1" (`--online` is a global option: it goes before the command).
    """
    target = name if name is not None else (f"{repo_id}@{revision}" if revision else repo_id)
    return f"mmib --online download {target}"


@contextlib.contextmanager
def _hub_offline_flag(offline_mode: bool) -> Iterator[None]:
    """Make `huggingface_hub.constants.HF_HUB_OFFLINE` agree with mmib's decision for the duration of a call."""
    previous = offline.set_hub_offline_flag(offline_mode)
    try:
        yield
    finally:
        offline.set_hub_offline_flag(previous)


def _progress_class() -> type:
    """huggingface_hub's tqdm, silenced unless stderr is a terminal (stderr stays clean in pipelines and logs)."""
    from huggingface_hub.utils.tqdm import tqdm as hf_tqdm

    class _Progress(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            if not sys.stderr.isatty():
                kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Progress


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of a huggingface_hub error or of one of its causes, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status
        current = current.__cause__ or current.__context__
    return None


def download_checkpoint(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    force: bool = False,
    online: bool | None = None,
    name: str | None = None,
) -> Path:
    """Download (or find in the cache) a snapshot of a hub repo.

    Args:
        repo_id: "org/name".
        revision: branch, tag or commit hash; None = "main".
        cache_dir: hub cache directory; None = `default_cache_dir()` (honours HF_HUB_CACHE / HF_HOME).
        token: access token; None = `$HF_TOKEN` or the saved login.
        force: download again even if cached (needs the network).
        online: True/False overrides `offline.is_offline()`; None follows it.
        name: the name the user typed, used in suggested commands (default `repo_id[@revision]`).

    Returns:
        The snapshot directory (`<cache>/models--org--name/snapshots/<commit>`).

    Raises:
        OfflineUnavailable: offline and not cached (says which command fetches it).
        CheckpointNotFound: no such repo or revision, or the hub is unreachable and nothing is cached.
        HubAccessDenied: the hub answered 401/403 (private or gated repo, missing or bad token).
    """
    request = _HubRequest.build(repo_id, revision, cache_dir=cache_dir, online=online, name=name)
    if request.offline and force:
        raise OfflineUnavailable(
            f"cannot re-download {request.label} in offline mode; run `{request.command} --force` "
            "(or set MMIB_OFFLINE=0)"
        )
    try:
        path = _snapshot(request, token=token, force=force)
    except Exception as exc:
        error = _download_error(exc, request)
        if error is None:
            raise
        raise error from exc
    logger.info("model %s available at %s", request.label, path)
    return Path(path)


@dataclass(frozen=True)
class _HubRequest:
    """What one download asks for, and the names its error messages use."""

    repo_id: str
    revision: str | None
    cache: Path
    endpoint: str
    offline: bool
    label: str  # repo_id[@revision]
    command: str  # the command that fetches it while online

    @classmethod
    def build(cls, repo_id: str, revision: str | None, *, cache_dir: str | Path | None, online: bool | None,
              name: str | None) -> "_HubRequest":
        return cls(repo_id=repo_id, revision=revision,
                   cache=Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(),
                   endpoint=hub_endpoint(), offline=offline.is_offline() if online is None else not online,
                   label=f"{repo_id}@{revision}" if revision else repo_id,
                   command=fetch_command(repo_id, revision, name=name))


_ACCESS_HINT = "pass --token TOKEN or set HF_TOKEN (or run `hf auth login`) with a token that can read it"


def _snapshot(request: _HubRequest, *, token: str | None, force: bool) -> str:
    """`huggingface_hub.snapshot_download` with mmib's offline decision, endpoint, cache and progress bar."""
    import huggingface_hub

    with _hub_offline_flag(request.offline):
        return huggingface_hub.snapshot_download(
            request.repo_id,
            revision=request.revision,
            cache_dir=request.cache,
            token=token,
            force_download=force,
            local_files_only=request.offline,
            endpoint=request.endpoint,
            library_name="mmib",
            library_version=__version__,
            tqdm_class=_progress_class(),
        )


def _download_error(exc: Exception, request: _HubRequest) -> MMIBError | None:
    """The MMIBError a failed snapshot download means, or None for an unexpected exception (to re-raise)."""
    from huggingface_hub import errors as hf_errors

    # RemoteEntryNotFoundError appeared in huggingface_hub 1.0; EntryNotFoundError before
    remote_entry_missing = getattr(hf_errors, "RemoteEntryNotFoundError", hf_errors.EntryNotFoundError)
    repo_id, label, endpoint = request.repo_id, request.label, request.endpoint
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return CheckpointNotFound(
            f"revision {request.revision!r} not found in hub repo {repo_id} (endpoint {endpoint}); check the "
            "branch, tag or commit"
        )
    if isinstance(exc, hf_errors.GatedRepoError):
        return HubAccessDenied(
            f"hub repo {repo_id} is gated (endpoint {endpoint}): accept its conditions at {endpoint}/{repo_id}, "
            f"then {_ACCESS_HINT}"
        )
    if isinstance(exc, hf_errors.LocalEntryNotFoundError):  # includes IncompleteSnapshotError
        if request.offline:
            return OfflineUnavailable(
                f"{label} is not in the local cache ({request.cache}) and mmib is offline; fetch it with "
                f"`{request.command}` (or set MMIB_OFFLINE=0)"
            )
        return _map_http_error(exc, repo_id, label, endpoint, _ACCESS_HINT, request.cache)
    if isinstance(exc, remote_entry_missing):
        return CheckpointNotFound(f"a file of {label} vanished from the hub (endpoint {endpoint}): {exc}")
    if isinstance(exc, (hf_errors.RepositoryNotFoundError, hf_errors.HfHubHTTPError)):
        return _map_http_error(exc, repo_id, label, endpoint, _ACCESS_HINT, request.cache)
    if type(exc).__module__.split(".")[0] in _TRANSPORT_MODULES:
        return CheckpointNotFound(f"could not download {label} from {endpoint}: {type(exc).__name__}: {exc}")
    return None


def _map_http_error(
    exc: BaseException, repo_id: str, label: str, endpoint: str, access_hint: str, cache: Path
) -> MMIBError:
    """Turn a hub error into the matching MMIBError by its HTTP status."""
    status = _http_status(exc)
    if status in (401, 403):
        return HubAccessDenied(
            f"the hub refused access to {repo_id} (HTTP {status}, endpoint {endpoint}): it is private or gated, or "
            f"the token is wrong; {access_hint}"
        )
    if status == 404:
        return CheckpointNotFound(f"no repo {repo_id} on the hub (endpoint {endpoint}); check the repo id")
    reason = f"HTTP {status}" if status is not None else f"{type(exc.__cause__ or exc).__name__}"
    return CheckpointNotFound(
        f"could not reach the hub at {endpoint} for {label} ({reason}) and it is not in the cache ({cache}); "
        "check the network, HF_ENDPOINT and proxy settings"
    )
