"""`mmib download` + `mmib annotate --model org/name[@rev]` end to end against the loopback fake hub.

Real code paths only: huggingface_hub talks HTTP to `fakehub.FakeHub` (HF_ENDPOINT, HF_HOME set by the `fake_hub`
fixture); the repo holds a real tiny MMIB bundle (NER + RE, trained "with images") built from the test fixtures.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest

from cli_helpers import invoke
from conftest import build_tiny_checkpoint
from fakehub import FakeHub, fake_hub  # noqa: F401  (fixture)
from mmib_cli.storage.format import checkpoint_files, write_bundle

REPO = "org/tiny"


@pytest.fixture(autouse=True)
def _restore_network(monkeypatch: pytest.MonkeyPatch):
    """`--online`/`--offline` publish their choice to the environment and huggingface_hub: undo it afterwards."""
    from huggingface_hub import constants

    for name in ("MMIB_OFFLINE", "HF_HUB_OFFLINE"):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)


def repo_files(directory: Path) -> dict[str, bytes]:
    return {rel: (directory / rel).read_bytes() for rel in checkpoint_files(directory)}


@pytest.fixture(scope="module")
def bundle_v2(tiny_bert_dir, tmp_path_factory) -> Path:
    """A second bundle (other random weights, other card) for revision `v2`."""
    root = tmp_path_factory.mktemp("bundle-v2")
    parts = {task: build_tiny_checkpoint(root / "parts" / task, task, tiny_bert_dir, seed=1) for task in ("ner", "re")}
    write_bundle(root / "bundle", parts, card="# tiny v2\n")
    return root / "bundle"


@pytest.fixture()
def hub(fake_hub: FakeHub, tiny_bundle: Path, bundle_v2: Path) -> FakeHub:  # noqa: F811
    fake_hub.add_repo(REPO, {"main": repo_files(tiny_bundle), "v2": repo_files(bundle_v2)})
    return fake_hub


@pytest.fixture()
def posts(tmp_path: Path, sample_images: dict[str, Path]) -> Path:
    path = tmp_path / "posts.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in [
        {"id": "a", "text": "Kawhi Leonard visits New York with the Raptors", "image": str(sample_images["red"])},
        {"id": "b", "text": "look at Jordan today", "image": str(sample_images["blue"])},
        {"id": "c", "text": "no picture here"},
    ]) + "\n")
    return path


def annotate(posts: Path, out: Path, model: str, *flags: str, expect: int = 0):
    return invoke(*flags, "annotate", str(posts), "-o", str(out), "--model", model, "--num-workers", "0",
                  "--relations", "--force", expect=expect)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_download_then_annotate_then_cache(hub: FakeHub, posts: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    result = invoke("--online", "download", f"{REPO}@main", expect=0)
    snapshot = Path(result.stdout.strip())
    assert snapshot.name == hub.commit_sha(REPO, "main")
    assert Path(os.environ["HF_HOME"]) / "hub" / "models--org--tiny" in snapshot.parents  # huggingface_hub cache
    assert repo_files(snapshot) == repo_files(tiny_bundle)  # every file, byte for byte
    assert hub.file_requests(REPO)

    hub.clear_requests()
    out = tmp_path / "out.jsonl"
    annotate(posts, out, REPO, "--online")  # download (cached) + load + annotate
    records = read_jsonl(out)
    assert [r["id"] for r in records] == ["a", "b", "c"]
    assert all(r["model"] == f"{REPO}@{hub.commit_sha(REPO, 'main')}" for r in records)
    assert [r["image_used"] for r in records] == [True, True, False]
    for record in records:
        assert len(record["bio"]) == len(record["tokens"])
        for entity in record["entities"]:
            assert record["text"][entity["start"]:entity["end"]] == entity["text"]
    assert hub.file_requests() == []  # the files came from the cache: only the revision was looked up

    hub.clear_requests()
    again = tmp_path / "again.jsonl"
    annotate(posts, again, REPO, "--online")
    assert hub.file_requests() == []
    assert again.read_bytes() == out.read_bytes()  # same model, same output

    hub.clear_requests()
    offline = tmp_path / "offline.jsonl"
    annotate(posts, offline, f"{REPO}@main", "--offline")  # offline: from the cache, no request at all
    assert hub.requests == []
    assert [r["bio"] for r in read_jsonl(offline)] == [r["bio"] for r in records]


def test_annotate_downloads_on_first_use(hub: FakeHub, posts: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    annotate(posts, out, f"{REPO}@main", "--online")
    assert hub.file_requests(REPO)  # fetched on the fly
    assert {r["model"] for r in read_jsonl(out)} == {f"{REPO}@main"}


def test_offline_empty_cache_fails_fast(hub: FakeHub, posts: Path, tmp_path: Path) -> None:
    from mmib_cli.storage.resolve import resolve_model
    from mmib_cli.errors import OfflineUnavailable

    hub.clear_requests()
    out = tmp_path / "out.jsonl"
    result = annotate(posts, out, REPO, "--offline", expect=1)
    assert f"mmib --online download {REPO}`" in result.stderr
    assert "not in the local cache" in result.stderr and result.stderr.startswith("Error: ")
    assert hub.requests == []  # not a single request
    assert not out.exists() and not Path(f"{out}.partial").exists()

    with pytest.raises(OfflineUnavailable):
        resolve_model(f"{REPO}@v2", online=False)
    assert hub.requests == []  # fails at once: not a single request, so no retry or timeout to wait for

    result = invoke("--offline", "download", f"{REPO}@v2", expect=1)
    assert f"mmib --online download {REPO}@v2`" in result.stderr
    assert hub.requests == []

    # the hint is a command that runs as printed
    command = re.search(r"fetch it with `([^`]+)`", result.stderr).group(1)
    assert shlex.split(command)[0] == "mmib"
    fetched = Path(invoke(*shlex.split(command)[1:], expect=0).stdout.strip())
    assert fetched.name == hub.commit_sha(REPO, "v2")


def test_revision_selection(hub: FakeHub, posts: Path, bundle_v2: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    v2 = Path(invoke("--online", "download", f"{REPO}@v2", expect=0).stdout.strip())
    assert v2.name == hub.commit_sha(REPO, "v2")
    assert repo_files(v2) == repo_files(bundle_v2) != repo_files(tiny_bundle)
    assert (v2 / "README.md").read_text() == "# tiny v2\n"

    by_option = Path(invoke("--online", "download", REPO, "--revision", "v2", expect=0).stdout.strip())
    assert by_option == v2
    main = Path(invoke("--online", "download", REPO, expect=0).stdout.strip())
    assert main.name == hub.commit_sha(REPO, "main") and main != v2

    out_v2, out_main = tmp_path / "v2.jsonl", tmp_path / "main.jsonl"
    annotate(posts, out_v2, f"{REPO}@v2", "--offline")
    annotate(posts, out_main, f"{REPO}@main", "--offline")
    v2_records, main_records = read_jsonl(out_v2), read_jsonl(out_main)
    assert {r["model"] for r in v2_records} == {f"{REPO}@v2"}
    assert {r["model"] for r in main_records} == {f"{REPO}@main"}

    by_commit = Path(invoke("--offline", "download", f"{REPO}@{hub.commit_sha(REPO, 'v2')}", expect=0).stdout.strip())
    assert by_commit == v2


def test_missing_repo_and_revision_exit_1(hub: FakeHub) -> None:
    result = invoke("--online", "download", "org/missing", expect=1)
    assert "no repo org/missing" in result.stderr
    result = invoke("--online", "download", f"{REPO}@nope", expect=1)
    assert "revision 'nope' not found" in result.stderr


def test_unauthorised_download_exit_1_then_token_works(hub: FakeHub) -> None:
    hub.token = "secret-token"
    result = invoke("--online", "download", REPO, expect=1)
    assert "--token" in result.stderr and "Traceback" not in result.stderr
    result = invoke("--online", "download", REPO, "--token", "secret-token", expect=0)
    assert (Path(result.stdout.strip()) / "bundle.json").is_file()


def test_download_goes_online_by_itself_unless_told_offline(hub: FakeHub) -> None:
    hub.clear_requests()
    unset = {"MMIB_OFFLINE": None, "HF_HUB_OFFLINE": None}
    for env in ({**unset, "MMIB_OFFLINE": "1"}, {**unset, "HF_HUB_OFFLINE": "1"}):
        result = invoke("download", f"{REPO}@v2", env=env, expect=1)  # an explicit offline choice is honoured
        assert "not in the local cache" in result.stderr and hub.requests == []
    result = invoke("--offline", "download", f"{REPO}@v2", env=unset, expect=1)
    assert hub.requests == []
    fetched = Path(invoke("download", f"{REPO}@v2", env=unset, expect=0).stdout.strip())
    assert hub.file_requests(REPO) and (fetched / "bundle.json").is_file()
