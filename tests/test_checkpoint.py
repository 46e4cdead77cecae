"""Checkpoint format, registry, sha256 checks, hub download (against a loopback fake hub) and offline behaviour.

Real code paths only: huggingface_hub talks HTTP to `fakehub.FakeHub` through HF_ENDPOINT; nothing is mocked.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from fakehub import FakeHub, fake_hub  # noqa: F401  (fixture)
from mmib_cli import offline
from mmib_cli.storage import (
    ResolvedModel,
    checkpoint_files,
    download_checkpoint,
    get_spec,
    load_registry,
    load_state,
    read_bundle,
    resolve_model,
    save_state,
    sha256_file,
    split_revision,
    verify_files,
    write_bundle,
)
from mmib_cli.storage.registry import REQUIRED_KEYS, SOURCE_KEYS, SOURCES, models_dir, parse_entry
from mmib_cli.errors import (
    CheckpointNotFound,
    ChecksumMismatch,
    HubAccessDenied,
    InvalidCheckpoint,
    OfflineUnavailable,
)

REPO = "mmib-test/tiny-ner"


# --------------------------------------------------------------------------------------------------- helpers
def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "encoder.weight": torch.randn(4, 3, generator=generator),
        "encoder.bias": torch.zeros(4),
        "crf.transitions": torch.randn(9, 9, generator=generator),
        "steps": torch.tensor([seed, 1, 2], dtype=torch.long),
    }


def tiny_config(version: str = "0.1.0", **extra: object) -> dict[str, object]:
    return {"task": "ner", "labels": ["O", "B-PER", "I-PER"], "mmib_version": version, "format_version": 1, **extra}


def build_checkpoint(directory: Path, seed: int = 0, version: str = "0.1.0") -> Path:
    save_state(directory, tiny_config(version, seed=seed), tiny_state(seed), card=f"# tiny {seed}\n")
    return directory


def as_repo_files(directory: Path) -> dict[str, bytes]:
    return {rel: (directory / rel).read_bytes() for rel in checkpoint_files(directory)}


def write_registry(path: Path, models: dict[str, dict]) -> Path:
    path.write_text(json.dumps({"format": "mmib-registry", "version": 1, "models": models}))
    return path


def registry_entry(**fields: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "source": "hub", "repo_id": REPO, "revision": "main", "files": {}, "num_params": 10,
        "_metrics": {"twitter2017": {"entity_f1": 0.5}}, "license": "Apache-2.0", "recipe": "mmib train ...",
        "_docs": "test entry", "card": "README.md",
    }
    entry.update(fields)
    return entry


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.allclose(a[key], b[key], atol=atol), key


@pytest.fixture()
def hub_with_revisions(fake_hub: FakeHub, tmp_path: Path) -> FakeHub:  # noqa: F811
    """REPO with branch main (seed 0, version 0.1.0) and tag v2 (seed 1, version 0.2.0)."""
    fake_hub.add_repo(REPO, {
        "main": as_repo_files(build_checkpoint(tmp_path / "src-main", seed=0, version="0.1.0")),
        "v2": as_repo_files(build_checkpoint(tmp_path / "src-v2", seed=1, version="0.2.0")),
    })
    return fake_hub


# --------------------------------------------------------------------------------------------------- offline.py
@pytest.fixture()
def restore_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test call configure_network(): env vars and huggingface_hub's constant are restored afterwards."""
    from huggingface_hub import constants

    for name in ("MMIB_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)


@pytest.mark.usefixtures("restore_network")
@pytest.mark.parametrize(
    ("online", "env", "expected"),
    [(None, None, False), (None, "0", True), (None, "1", False), (True, "1", True), (False, "0", False)],
)
def test_configure_network(monkeypatch: pytest.MonkeyPatch, online: bool | None, env: str | None,
                           expected: bool) -> None:
    from huggingface_hub import constants

    if env is not None:
        monkeypatch.setenv("MMIB_OFFLINE", env)
    assert offline.configure_network(online) is expected
    assert offline.is_offline() is (not expected)
    assert os.environ["HF_HUB_OFFLINE"] == ("0" if expected else "1")
    assert constants.HF_HUB_OFFLINE is (not expected)


@pytest.mark.usefixtures("restore_network")
def test_is_offline_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert offline.is_offline()  # nothing set: offline by default
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not offline.is_offline()
    monkeypatch.setenv("MMIB_OFFLINE", "1")
    assert offline.is_offline()  # MMIB_OFFLINE wins


# --------------------------------------------------------------------------------------------------- verify.py
def test_sha256_and_verify_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_bytes(b"x" * (3 << 20) + b"tail")  # > one read chunk
    digest = hashlib.sha256(b"x" * (3 << 20) + b"tail").hexdigest()
    assert sha256_file(tmp_path / "sub" / "a.bin") == digest
    verify_files(tmp_path, {"sub/a.bin": digest})
    verify_files(tmp_path, {"sub/a.bin": digest.upper()})  # case-insensitive

    with pytest.raises(ChecksumMismatch) as info:
        verify_files(tmp_path, {"sub/a.bin": "0" * 64}, name="mmib-x")
    message = str(info.value)
    assert "a.bin" in message and "0" * 64 in message and digest in message
    assert "mmib --online download mmib-x --force" in message

    with pytest.raises(InvalidCheckpoint, match="missing"):
        verify_files(tmp_path, {"nope.json": digest})
    with pytest.raises(ValueError):
        verify_files(tmp_path, {"../escape": digest})


# --------------------------------------------------------------------------------------------------- serialization.py
def test_save_load_roundtrip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tiny_state()
    save_state(tmp_path / "ck", tiny_config(), state, card="# Tiny\n")
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["README.md", "config.json", "model.safetensors"]
    text = (tmp_path / "ck" / "config.json").read_text()
    assert text == json.dumps(tiny_config(), indent=2, sort_keys=True) + "\n"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as handle:
        assert handle.metadata() == {"format": "pt"}

    def no_pickle(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", no_pickle)
    config, loaded = load_state(tmp_path / "ck")
    assert config == tiny_config()
    assert_same_state(state, loaded)


def test_saved_files_get_the_umask_mode_not_0600(tmp_path: Path) -> None:
    """Checkpoints go to shared directories: files are 0666 less the umask, like a plain open() makes them."""
    old = os.umask(0o022)
    try:
        save_state(tmp_path / "ck", tiny_config(), tiny_state(), card="# Tiny\n")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "ck").iterdir()}
    assert modes == {"README.md": 0o644, "config.json": 0o644, "model.safetensors": 0o644}


def test_save_fp16_loads_float32(tmp_path: Path) -> None:
    state = tiny_state()
    save_state(tmp_path, {"a": 1}, state, dtype=torch.float16)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        assert handle.get_tensor("encoder.weight").dtype == torch.float16
        assert handle.get_tensor("steps").dtype == torch.long  # integers are not cast
    assert not (tmp_path / "README.md").exists()
    _, loaded = load_state(tmp_path)
    assert loaded["encoder.weight"].dtype == torch.float32
    assert_same_state(state, loaded, atol=1e-2)


def test_save_tied_weights(tmp_path: Path) -> None:
    shared = torch.randn(5, 2)
    save_state(tmp_path, {}, {"embed.weight": shared, "head.weight": shared, "view": shared[1:3]})
    _, loaded = load_state(tmp_path)
    assert torch.equal(loaded["embed.weight"], loaded["head.weight"])
    assert torch.equal(loaded["view"], shared[1:3])


def test_load_refuses_pickle(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(InvalidCheckpoint, match=r"pytorch_model\.bin.*safetensors only"):
        load_state(tmp_path)
    with pytest.raises(InvalidCheckpoint, match="model.safetensors is missing"):
        load_state(_only_config(tmp_path))
    with pytest.raises(InvalidCheckpoint, match="does not exist"):
        load_state(tmp_path / "absent")


def _only_config(tmp_path: Path) -> Path:
    directory = tmp_path / "only-config"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    return directory


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    build_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InvalidCheckpoint, match="safetensors"):
        load_state(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InvalidCheckpoint, match="not valid JSON"):
        load_state(tmp_path)


def test_bundle_roundtrip(tmp_path: Path) -> None:
    ner = build_checkpoint(tmp_path / "ner-src", seed=0)
    rel = build_checkpoint(tmp_path / "re-src", seed=1)
    bundle = tmp_path / "bundle"
    write_bundle(bundle, {"ner": ner, "re": rel}, card="# bundle\n")
    assert json.loads((bundle / "bundle.json").read_text()) == {"format": "mmib-bundle", "ner": "ner", "re": "re"}
    components = read_bundle(bundle)
    assert components == {"ner": bundle / "ner", "re": bundle / "re"}
    assert_same_state(load_state(components["re"])[1], tiny_state(1))
    assert read_bundle(ner) is None  # a plain checkpoint is not a bundle
    files = checkpoint_files(bundle)
    assert {"bundle.json", "README.md", "ner/config.json", "re/model.safetensors"} <= set(files)
    assert files["ner/model.safetensors"] == sha256_file(ner / "model.safetensors")

    write_bundle(bundle, {"ner": bundle / "ner"})  # in place: no copy, bundle.json rewritten
    assert read_bundle(bundle) == {"ner": bundle / "ner"}
    (bundle / "bundle.json").write_text(json.dumps({"format": "mmib-bundle", "ner": "../ner-src"}))
    with pytest.raises(InvalidCheckpoint, match="sub-directory"):
        read_bundle(bundle)
    (bundle / "bundle.json").write_text(json.dumps({"format": "other", "ner": "ner"}))
    with pytest.raises(InvalidCheckpoint, match="mmib-bundle"):
        read_bundle(bundle)
    with pytest.raises(ValueError):
        write_bundle(bundle, {"pos": ner})


# --------------------------------------------------------------------------------------------------- registry.py
def test_packaged_registry_is_valid() -> None:
    raw = json.loads((models_dir() / "registry.json").read_text())
    assert raw["format"] == "mmib-registry"
    assert "mmib-default" in raw["models"]
    for name, entry in raw["models"].items():
        assert set(REQUIRED_KEYS) <= set(entry), name
        assert entry["source"] in SOURCES, name
        assert set(SOURCE_KEYS[entry["source"]]) <= set(entry), name
    registry = load_registry()
    default = registry["mmib-default"]
    assert default.source == "embedded" and default.path == "mmib-default"
    assert default.checkpoint_dir() == models_dir() / "mmib-default"
    assert get_spec("mmib-default") == default
    assert default.to_dict() == raw["models"]["mmib-default"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"license": None}, "'license' must be a non-empty string"),
        ({"source": "ftp"}, "unknown source 'ftp'"),
        ({"revision": None}, "must pin a 'revision'"),
        ({"repo_id": "no-slash"}, "org/name"),
        ({"files": {"model.safetensors": "abc"}}, "64 lowercase hex"),
        ({"files": {"../x": "0" * 64}}, "without '..'"),
        ({"num_params": -1}, "num_params"),
        ({"_metrics": {"twitter2017": {"f1": "high"}}}, "_metrics"),
    ],
)
def test_registry_entry_validation(change: dict, message: str) -> None:
    with pytest.raises(InvalidCheckpoint, match=message):
        parse_entry("x", registry_entry(**change))


@pytest.mark.parametrize("key", [*REQUIRED_KEYS, "repo_id"])
def test_registry_entry_requires_keys(key: str) -> None:
    entry = registry_entry()
    del entry[key]
    with pytest.raises(InvalidCheckpoint, match="source" if key == "source" else f"missing key.*{key}"):
        parse_entry("x", entry)


def test_registry_override_and_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_registry(tmp_path / "reg.json", {"hubby": registry_entry()})
    monkeypatch.setenv("MMIB_REGISTRY", str(path))
    assert list(load_registry()) == ["hubby"]
    assert get_spec("hubby").repo_id == REPO
    with pytest.raises(CheckpointNotFound, match="known: hubby"):
        get_spec("nope")
    with pytest.raises(InvalidCheckpoint, match="no '/' or '@'"):
        parse_entry("org/name", registry_entry())
    (tmp_path / "bad.json").write_text(json.dumps({"models": {}}))
    with pytest.raises(InvalidCheckpoint, match="mmib-registry"):
        load_registry(tmp_path / "bad.json")


# --------------------------------------------------------------------------------------------------- download / resolve
def test_download_and_load(hub_with_revisions: FakeHub, tmp_path: Path) -> None:
    path = download_checkpoint(REPO, cache_dir=tmp_path / "cache")
    assert path.parent.parent.name == "models--mmib-test--tiny-ner"  # huggingface_hub cache layout
    assert path.name == hub_with_revisions.commit_sha(REPO, "main")
    config, state = load_state(path)
    assert config["seed"] == 0
    assert_same_state(state, tiny_state(0))
    assert hub_with_revisions.file_requests(REPO)  # it did go to the server


def test_download_honours_hf_home(hub_with_revisions: FakeHub) -> None:
    path = download_checkpoint(REPO)
    assert Path(os.environ["HF_HOME"]) / "hub" in path.parents


def test_revision_picks_right_files(hub_with_revisions: FakeHub, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    v2 = resolve_model(f"{REPO}@v2", cache_dir=cache)
    assert v2 == ResolvedModel(v2.path, REPO, "v2") and v2.label == f"{REPO}@v2"
    assert load_state(v2.path)[0]["seed"] == 1
    assert_same_state(load_state(v2.path)[1], tiny_state(1))

    main = resolve_model(REPO, cache_dir=cache)
    assert load_state(main.path)[0]["seed"] == 0
    assert main.revision == hub_with_revisions.commit_sha(REPO, "main")  # no revision given: the commit hash
    assert main.path != v2.path

    overridden = resolve_model(f"{REPO}@v2", revision="main", cache_dir=cache)  # --revision wins over @rev
    assert overridden.path == main.path and overridden.revision == "main"

    by_commit = resolve_model(f"{REPO}@{hub_with_revisions.commit_sha(REPO, 'v2')}", cache_dir=cache)
    assert by_commit.path == v2.path


def test_second_download_uses_cache(hub_with_revisions: FakeHub, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    first = download_checkpoint(REPO, revision="v2", cache_dir=cache)
    assert len(hub_with_revisions.file_requests(REPO)) >= 3
    hub_with_revisions.clear_requests()
    second = download_checkpoint(REPO, revision="v2", cache_dir=cache)
    assert second == first
    assert hub_with_revisions.file_requests() == []  # only the revision look-up, no file request

    monkeypatch.setenv("MMIB_OFFLINE", "1")  # offline: served from the cache without any request
    hub_with_revisions.clear_requests()
    assert download_checkpoint(REPO, revision="v2", cache_dir=cache) == first
    assert resolve_model(f"{REPO}@v2", cache_dir=cache).path == first
    assert hub_with_revisions.requests == []


def test_force_redownloads(hub_with_revisions: FakeHub, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    download_checkpoint(REPO, cache_dir=cache)
    hub_with_revisions.clear_requests()
    download_checkpoint(REPO, cache_dir=cache, force=True)
    assert any(r.startswith("GET ") for r in hub_with_revisions.file_requests(REPO))


def test_offline_empty_cache_fails_fast(hub_with_revisions: FakeHub, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMIB_OFFLINE", "1")
    hub_with_revisions.clear_requests()
    with pytest.raises(OfflineUnavailable) as info:
        resolve_model(f"{REPO}@v2", cache_dir=tmp_path / "empty-cache")
    message = str(info.value)
    assert f"mmib --online download {REPO}@v2" in message and "MMIB_OFFLINE=0" in message
    assert "not in the local cache" in message
    assert hub_with_revisions.requests == []  # no network at all

    with pytest.raises(OfflineUnavailable, match="--force"):
        download_checkpoint(REPO, cache_dir=tmp_path / "empty-cache", force=True)
    # online=True overrides the environment for one call
    assert download_checkpoint(REPO, cache_dir=tmp_path / "c2", online=True).is_dir()


def test_missing_repo_and_revision(hub_with_revisions: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFound, match=f"no repo mmib-test/missing on the hub.*{hub_with_revisions.url}"):
        download_checkpoint("mmib-test/missing", cache_dir=tmp_path)
    with pytest.raises(CheckpointNotFound, match="revision 'nope' not found"):
        resolve_model(f"{REPO}@nope", cache_dir=tmp_path)


@pytest.mark.parametrize("sent", [None, "wrong-token"])
def test_token_required(fake_hub: FakeHub, tmp_path: Path, sent: str | None) -> None:  # noqa: F811
    fake_hub.add_repo(REPO, {"main": as_repo_files(build_checkpoint(tmp_path / "src"))})
    fake_hub.token = "s3cret"
    with pytest.raises(HubAccessDenied) as info:
        download_checkpoint(REPO, cache_dir=tmp_path / "cache", token=sent)
    assert "401" in str(info.value) and "HF_TOKEN" in str(info.value) and "--token" in str(info.value)
    assert fake_hub.file_requests() == []


def test_token_accepted(fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    fake_hub.add_repo(REPO, {"main": as_repo_files(build_checkpoint(tmp_path / "src"))})
    fake_hub.token = "s3cret"
    assert load_state(download_checkpoint(REPO, cache_dir=tmp_path / "a", token="s3cret"))[0]["seed"] == 0
    monkeypatch.setenv("HF_TOKEN", "s3cret")  # read by huggingface_hub at call time
    assert download_checkpoint(REPO, cache_dir=tmp_path / "b").is_dir()


def test_gated_repo(fake_hub: FakeHub, tmp_path: Path) -> None:  # noqa: F811
    fake_hub.add_repo(REPO, {"main": {"config.json": b"{}"}})
    fake_hub.gated.add(REPO)
    with pytest.raises(HubAccessDenied, match="HF_TOKEN"):
        download_checkpoint(REPO, cache_dir=tmp_path)


def test_registry_hub_entry_checks_sha256(hub_with_revisions: FakeHub, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    good = checkpoint_files(tmp_path / "src-v2")
    bad = dict(good, **{"model.safetensors": "0" * 64})
    registry = write_registry(tmp_path / "reg.json", {
        "tiny-good": registry_entry(revision="v2", files=good),
        "tiny-bad": registry_entry(revision="v2", files=bad),
    })
    monkeypatch.setenv("MMIB_REGISTRY", str(registry))
    resolved = resolve_model("tiny-good", cache_dir=tmp_path / "cache")
    assert (resolved.name, resolved.revision) == ("tiny-good", "v2")
    assert load_state(resolved.path)[0]["seed"] == 1

    with pytest.raises(ChecksumMismatch) as info:
        resolve_model("tiny-bad", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "model.safetensors" in message and "0" * 64 in message and good["model.safetensors"] in message
    assert "mmib --online download tiny-bad --force" in message

    with pytest.raises(CheckpointNotFound, match="pinned to revision 'v2'"):
        resolve_model("tiny-good@main", cache_dir=tmp_path / "cache")

    monkeypatch.setenv("MMIB_OFFLINE", "1")
    with pytest.raises(OfflineUnavailable, match="mmib --online download tiny-good"):
        resolve_model("tiny-good", cache_dir=tmp_path / "other-cache")


def test_corrupted_cached_file_is_rejected(hub_with_revisions: FakeHub, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    files = checkpoint_files(tmp_path / "src-main")
    registry = write_registry(tmp_path / "reg.json", {"tiny": registry_entry(files=files)})
    monkeypatch.setenv("MMIB_REGISTRY", str(registry))
    resolved = resolve_model("tiny", cache_dir=tmp_path / "cache")
    weights = (resolved.path / "model.safetensors").resolve()  # the blob behind the snapshot symlink
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ChecksumMismatch, match="mmib --online download tiny --force"):
        resolve_model("tiny", cache_dir=tmp_path / "cache")


def test_embedded_registry_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    build_checkpoint(models / "tiny-embedded", version="0.3.0")
    entry = registry_entry(source="embedded", path="tiny-embedded", revision=None,
                           files=checkpoint_files(models / "tiny-embedded"))
    del entry["repo_id"]
    monkeypatch.setenv("MMIB_REGISTRY", str(write_registry(models / "registry.json", {"tiny-embedded": entry})))
    monkeypatch.setenv("MMIB_OFFLINE", "1")
    resolved = resolve_model("tiny-embedded")
    assert resolved == ResolvedModel(models / "tiny-embedded", "tiny-embedded", "0.3.0")
    assert resolve_model("tiny-embedded@0.3.0").path == resolved.path
    with pytest.raises(CheckpointNotFound, match="ships revision '0.3.0' only"):
        resolve_model("tiny-embedded@9.9")

    (models / "tiny-embedded" / "config.json").write_text("{}")
    with pytest.raises(ChecksumMismatch, match="reinstall mmib"):
        resolve_model("tiny-embedded")
    shutil.rmtree(models / "tiny-embedded")
    with pytest.raises(CheckpointNotFound, match="should ship with mmib"):
        resolve_model("tiny-embedded")


def test_resolve_local_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_checkpoint(tmp_path / "my-model", version="0.4.2")
    assert resolve_model(tmp_path / "my-model") == ResolvedModel(tmp_path / "my-model", "my-model", "0.4.2")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    build_checkpoint(tmp_path / "org" / "name")
    local = resolve_model("org/name")  # an existing directory wins over a hub id
    assert local.path == Path("org/name") and local.name == "name"

    bundle = tmp_path / "bundle"
    write_bundle(bundle, {"ner": tmp_path / "my-model"})
    assert resolve_model(bundle).revision == "0.4.2"

    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidCheckpoint, match="neither config.json nor bundle.json"):
        resolve_model(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CheckpointNotFound, match="is a file"):
        resolve_model(tmp_path / "file.txt")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-such-model", "not a registry name .known: .*mmib-default"),
        ("./missing/dir", "no such directory"),
        ("a/b/c", "no such directory"),
        ("org/name@", "both parts non-empty"),
    ],
)
def test_resolve_unknown(spec: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointNotFound, match=message):
        resolve_model(spec)


def test_split_revision() -> None:
    assert split_revision("org/name") == ("org/name", None)
    assert split_revision("org/name@v1.0") == ("org/name", "v1.0")
    assert split_revision("org/name@refs/pr/1") == ("org/name", "refs/pr/1")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n, s in load_registry().items() if s.source == "embedded"))
def test_registry_num_params_matches_the_real_model(name):
    """Like torchvision's extended model tests: the registry's `num_params` is the parameter count of the model its
    files build (every task part of a bundle, base encoders included)."""
    from mmib_cli.checkpoint.assemble import load_model

    spec = load_registry()[name]
    directory = spec.checkpoint_dir()
    if not (directory / "config.json").is_file() and not (directory / "bundle.json").is_file():
        pytest.skip(f"embedded checkpoint {name} is not present in this checkout")
    if spec.extra.get("requires_extra"):
        from mmib_cli.storage.split_archive import SPLIT_TEXT_ENCODERS, missing_parts

        if any(missing_parts(archive) for archive in SPLIT_TEXT_ENCODERS.values()):
            pytest.skip(f"{name} needs the mmib[{spec.extra['requires_extra']}] extra, which is not installed")
    parts = read_bundle(directory) or {"single": directory}
    counted = sum(p.numel() for path in parts.values() for p in load_model(path).model.parameters())
    assert spec.num_params == counted
