"""A loopback fake of the Hugging Face hub, enough for `snapshot_download` and `hf_hub_download`.

Endpoints (what huggingface_hub 2.x calls; paths are relative to the server URL used as HF_ENDPOINT):

- `GET /api/models/{repo_id}` and `GET /api/models/{repo_id}/revision/{revision}`: model info
  (`id`, `sha` = commit of the revision, `siblings` = [{"rfilename"}], `private`, `gated`).
- `GET /api/models/{repo_id}/tree/{revision}[/{path}]?recursive=...`: the file listing (`type`, `path`, `size`,
  `oid`, `lfs` for weight files) that `snapshot_download` uses since huggingface_hub 1.x.
- `HEAD|GET /{repo_id}/resolve/{revision}/{path}`: the file, with `X-Repo-Commit`, `ETag` (git blob sha1, or the
  sha256 for LFS files, which also get `X-Linked-Etag` / `X-Linked-Size`), `Content-Length`.

Errors follow the hub: unknown repo → 404 `X-Error-Code: RepoNotFound`; unknown revision → 404 `RevisionNotFound`;
unknown file → 404 `EntryNotFound`; with `token=` set, a missing token → 401 and a wrong one → 401
`X-Error-Message: Invalid credentials in Authorization header`; repos in `gated` → 403 `GatedRepo`.
Every request is recorded as "METHOD /path?query" in `hub.requests`.

Usage::

    with FakeHub({"org/model": {"main": {"config.json": b"{}"}}}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        ...
        assert hub.file_requests("org/model") == []
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

Files = dict[str, bytes]
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's content (what the hub uses as ETag for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    """Whether the fake hub serves this file as an LFS file (weights)."""
    return path.endswith(LFS_SUFFIXES)


class FakeHub:
    """A threaded HTTP server on 127.0.0.1 (random port) serving repos from memory.

    Args:
        repos: repo_id → {revision (branch or tag) → {relative path → bytes}}.
        token: if set, every request must carry `Authorization: Bearer <token>` (else 401).
        gated: repo ids answered with 403 GatedRepo.
    """

    def __init__(
        self,
        repos: Mapping[str, Mapping[str, Mapping[str, bytes]]] | None = None,
        *,
        token: str | None = None,
        gated: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        self.repos: dict[str, dict[str, Files]] = {}
        self.token = token
        self.gated = set(gated)
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for repo_id, revisions in (repos or {}).items():
            self.add_repo(repo_id, revisions)

    # -- content -------------------------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, revisions: Mapping[str, Mapping[str, bytes]]) -> None:
        """Add or replace a repo: {revision → {path → bytes}}."""
        self.repos[repo_id] = {rev: dict(files) for rev, files in revisions.items()}

    def commit_sha(self, repo_id: str, revision: str) -> str:
        """The deterministic 40-hex commit id of a revision (a function of repo, revision name and content)."""
        files = self.repos[repo_id][revision]
        digest = hashlib.sha1(f"{repo_id}\0{revision}\0".encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
        return digest.hexdigest()

    def lookup(self, repo_id: str, revision: str) -> tuple[str, Files] | None:
        """(commit, files) for a branch/tag name or a commit id; None when unknown."""
        revisions = self.repos[repo_id]
        if revision in revisions:
            return self.commit_sha(repo_id, revision), revisions[revision]
        for name, files in revisions.items():
            if self.commit_sha(repo_id, name) == revision:
                return revision, files
        return None

    # -- request log ---------------------------------------------------------------------------------------------
    def file_requests(self, repo_id: str | None = None) -> list[str]:
        """Recorded requests that fetch file content or metadata (`/resolve/`), optionally for one repo."""
        prefix = f"/{repo_id}/resolve/" if repo_id else None
        return [
            r for r in self.requests
            if "/resolve/" in r and (prefix is None or r.split(" ", 1)[1].startswith(prefix))
        ]

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()

    def _record(self, line: str) -> None:
        with self._lock:
            self.requests.append(line)

    # -- server --------------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:43211 (use as HF_ENDPOINT)."""
        assert self._server is not None, "FakeHub not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        """Start serving in a daemon thread."""
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fakehub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the server and join its thread."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    server_version = "FakeHub/1.0"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    # -- helpers -------------------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: object, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _error(self, status: int, code: str | None, message: str, headers: Mapping[str, str] | None = None) -> None:
        extra = dict(headers or {})
        if code:
            extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
        self._json({"error": message}, status, extra)

    def _split_repo(self, parts: list[str]) -> tuple[str, list[str]]:
        """Split path segments into (repo_id, rest), preferring a known 'org/name' id."""
        if len(parts) >= 2 and f"{parts[0]}/{parts[1]}" in self.fake.repos:
            return f"{parts[0]}/{parts[1]}", parts[2:]
        if parts and parts[0] in self.fake.repos:
            return parts[0], parts[1:]
        if len(parts) >= 2:
            return f"{parts[0]}/{parts[1]}", parts[2:]
        return parts[0] if parts else "", parts[1:]

    def _authorised(self, repo_id: str) -> bool:
        """Send the 401/403/404 answer and return False when the request may not see the repo."""
        fake = self.fake
        if fake.token is not None:
            auth = self.headers.get("Authorization")
            if auth is None:
                self._error(401, None, "Unauthorized: a token is required")
                return False
            if auth != f"Bearer {fake.token}":
                self._error(401, None, "Invalid credentials in Authorization header")
                return False
        if repo_id in fake.gated:
            message = f"Access to model {repo_id} is restricted and you are not in the authorized list."
            self._error(403, "GatedRepo", message)
            return False
        if repo_id not in fake.repos:
            self._error(404, "RepoNotFound", "Repository not found")
            return False
        return True

    # -- routes --------------------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        self.fake._record(f"{self.command} {self.path}")
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.split("/") if p]
        query = parse_qs(split.query)
        if len(parts) >= 2 and parts[:2] == ["api", "models"]:
            self._api_models(parts[2:], query)
            return
        repo_id, rest = self._split_repo(parts)
        if len(rest) >= 3 and rest[0] == "resolve":
            self._resolve(repo_id, rest[1], "/".join(rest[2:]))
            return
        self._error(404, None, f"no route for {split.path}")

    def _api_models(self, parts: list[str], query: dict[str, list[str]]) -> None:
        repo_id, rest = self._split_repo(parts)
        if self.command != "GET":
            self._error(405, None, "method not allowed")
            return
        if not self._authorised(repo_id):
            return
        if not rest:
            kind, revision, sub = "info", "main", []
        elif rest[0] in ("revision", "tree") and len(rest) >= 2:
            kind, revision, sub = rest[0], rest[1], rest[2:]
        else:
            self._error(404, None, f"no route for /api/models/{'/'.join(parts)}")
            return
        found = self.fake.lookup(repo_id, revision)
        if found is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        commit, files = found
        if kind in ("info", "revision"):
            self._json({
                "id": repo_id, "modelId": repo_id, "sha": commit, "private": self.fake.token is not None,
                "gated": False, "disabled": False, "tags": [], "library_name": "mmib",
                "siblings": [{"rfilename": path} for path in sorted(files)],
            })
            return
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        self._json(_tree(files, "/".join(sub), recursive))

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        if not self._authorised(repo_id):
            return
        found = self.fake.lookup(repo_id, revision)
        if found is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        commit, files = found
        if path not in files:
            self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", {"X-Repo-Commit": commit})
            return
        data = files[path]
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if is_lfs(path):
            sha256 = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{git_blob_sha1(data)}"'
        self._send(200, data, headers, content_type="application/octet-stream")


def _tree(files: Files, under: str, recursive: bool) -> list[dict[str, object]]:
    """Hub tree listing of `files` below `under` (directories first-seen order, then files, like the hub)."""
    prefix = f"{under.strip('/')}/" if under.strip("/") else ""
    entries: list[dict[str, object]] = []
    seen_dirs: set[str] = set()
    for path in sorted(files):
        if not path.startswith(prefix):
            continue
        rel_parts = path[len(prefix):].split("/")
        n_dirs = len(rel_parts) - 1 if recursive else min(1, len(rel_parts) - 1)
        for i in range(1, n_dirs + 1):  # parent directories
            directory = prefix + "/".join(rel_parts[:i])
            if directory not in seen_dirs:
                seen_dirs.add(directory)
                oid = hashlib.sha1(directory.encode()).hexdigest()
                entries.append({"type": "directory", "path": directory, "oid": oid, "size": 0})
        if len(rel_parts) > 1 and not recursive:
            continue
        data = files[path]
        entry: dict[str, object] = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
        if is_lfs(path):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        entries.append(entry)
    return entries


@pytest.fixture()
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    """A running FakeHub (empty: call `add_repo`) with HF_ENDPOINT pointed at it, mmib online (MMIB_OFFLINE=0),
    HF_HOME in a fresh temporary directory and HF_TOKEN unset."""
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("MMIB_OFFLINE", "0")
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub
