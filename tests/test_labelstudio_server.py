"""Round trip against a real Label Studio server on loopback: export → import → review → export → fine-tune.

Skipped unless a `label-studio` executable is found: `$MMIB_LABEL_STUDIO` (its path) or `label-studio` on PATH.
Label Studio pins versions of numpy and pyarrow older than this project's, so install it in its own venv
(`python -m venv ~/lsvenv && ~/lsvenv/bin/pip install label-studio`) and point `MMIB_LABEL_STUDIO` at
`~/lsvenv/bin/label-studio`. A first start migrates a new database (minutes on a slow machine): the migrated
database is kept in `$MMIB_LABEL_STUDIO_CACHE` (default `~/.cache/mmib/label-studio-test`) and copied for later
runs. `$MMIB_LABEL_STUDIO_TIMEOUT` bounds the start (default 900 s).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cli_helpers import invoke, write_jsonl

USER, PASSWORD, TOKEN = "reviewer@example.com", "mmib-test-only", "mmib0loopback0test0token"
PEOPLE = ["john", "mary", "obama", "smith", "david", "paul", "anna", "peter"]
PLACES = ["paris", "london", "berlin", "texas", "tokyo", "boston", "rome", "madrid"]
TARGET = "obama visited berlin"


def _executable() -> str | None:
    return os.environ.get("MMIB_LABEL_STUDIO") or shutil.which("label-studio")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Client:
    """The few REST calls the test needs, authenticated with the legacy token."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body=None):
        request = urllib.request.Request(self.url + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"Token {TOKEN}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            data = response.read()
        return json.loads(data) if data else None


def _wait_up(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"label-studio exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(2)
    pytest.fail(f"label-studio did not answer within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A Label Studio server on 127.0.0.1 (free port, temporary data dir, a user with a legacy API token)."""
    executable = _executable()
    if not executable:
        pytest.skip("label-studio not installed (set MMIB_LABEL_STUDIO to its executable)")
    data = tmp_path_factory.mktemp("ls-data")
    cache = Path(os.environ.get("MMIB_LABEL_STUDIO_CACHE", Path.home() / ".cache" / "mmib" / "label-studio-test"))
    key = hashlib.sha256(f"{Path(executable).resolve()}:{Path(executable).stat().st_mtime}".encode()).hexdigest()[:16]
    template = cache / f"{key}.sqlite3"
    if template.is_file():
        shutil.copy(template, data / "label_studio.sqlite3")
    port, log = _free_port(), data / "server.log"
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LATEST_VERSION_CHECK": "false",
           "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(data)}
    env.pop("HOST", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([executable, "start", "--no-browser", "--internal-host", "127.0.0.1",
                                 "--port", str(port), "--data-dir", str(data), "--username", USER,
                                 "--password", PASSWORD, "--user-token", TOKEN, "--enable-legacy-api-token"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_up(url, proc, log, float(os.environ.get("MMIB_LABEL_STUDIO_TIMEOUT", "900")))
        if not template.is_file():  # keep the migrated database (with the test user) for the next run
            cache.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(data / "label_studio.sqlite3") as src, sqlite3.connect(template) as dst:
                src.backup(dst)
        yield Client(url)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _regions(text: str, spans: list[tuple[str, str]]) -> list[dict]:
    out = []
    for i, (surface, label) in enumerate(spans):
        start = text.index(surface)
        out.append({"id": f"r{i}", "from_name": "label", "to_name": "text", "type": "labels",
                    "value": {"start": start, "end": start + len(surface), "text": surface, "labels": [label]}})
    return out


@pytest.mark.slow
def test_review_in_label_studio_then_fine_tune(label_studio, tiny_text_only_ner, tmp_path):
    pairs = [(p, q) for p in PEOPLE for q in PLACES if (p, q) != ("obama", "berlin")][:19] + [("obama", "berlin")]
    posts = write_jsonl(tmp_path / "posts.jsonl", [{"id": f"p{i}", "text": f"{p} visited {q}"}
                                                   for i, (p, q) in enumerate(pairs)])
    out = tmp_path / "out.jsonl"
    assert invoke("annotate", posts, "-o", out, "-m", tiny_text_only_ner, "--no-progress").exit_code == 0
    config = invoke("export", "--label-config", "-m", tiny_text_only_ner).stdout
    tasks_file = tmp_path / "tasks.json"
    assert invoke("export", out, "-o", tasks_file).exit_code == 0

    project = label_studio.call("POST", "/api/projects", {"title": "mmib review", "label_config": config})
    imported = label_studio.call("POST", f"/api/projects/{project['id']}/import",
                                 json.loads(tasks_file.read_text()))
    assert imported["task_count"] == 20 and imported["prediction_count"] == 20
    tasks = label_studio.call("GET", f"/api/tasks?project={project['id']}&page_size=100")["tasks"]
    for task in tasks:
        text = task["data"]["text"]
        person, _, place = text.split(" ")
        corrected = _regions(text, [(person, "PER"), (place, "LOC")])
        if text != TARGET:
            label_studio.call("POST", f"/api/tasks/{task['id']}/annotations", {"result": corrected})
            continue
        # the reviewer first accepts the model's (wrong) prediction, then changes that annotation
        prediction = label_studio.call("GET", f"/api/predictions?task={task['id']}")[0]
        accepted = label_studio.call("POST", f"/api/tasks/{task['id']}/annotations",
                                     {"result": prediction["result"]})
        label_studio.call("PATCH", f"/api/annotations/{accepted['id']}", {"result": corrected})
    export = label_studio.call("GET", f"/api/projects/{project['id']}/export?exportType=JSON")
    export_file = tmp_path / "export.json"
    export_file.write_text(json.dumps(export), encoding="utf-8")
    (target,) = [t for t in export if t["data"]["text"] == TARGET]
    assert [r["value"]["labels"] for r in target["annotations"][0]["result"]] == [["PER"], ["LOC"]]

    ckpt = tmp_path / "corrected"
    result = invoke("train", "ner", "--init", tiny_text_only_ner, "--train", export_file, "-o", ckpt,
                    "--holdout", "0.2", "--epochs", "15", "-b", "4", "--lr", "1e-3", "--head-lr", "1e-2",
                    "--patience", "15")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["corrections"]["posts"] == 20 and summary["scores"]["holdout"]["after_f1"] > \
        summary["scores"]["holdout"]["before_f1"]
    again = tmp_path / "again.jsonl"
    target_post = write_jsonl(tmp_path / "target.jsonl", [{"id": "t", "text": TARGET}])
    assert invoke("annotate", target_post, "-o", again, "-m", ckpt, "--no-progress").exit_code == 0
    record = json.loads(again.read_text())
    assert [(e["text"], e["label"]) for e in record["entities"]] == [("obama", "PER"), ("berlin", "LOC")]
