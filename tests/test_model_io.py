"""Checkpoint save/load of whole MMIB models (mmib_cli.checkpoint.assemble) on the tiny BERT + tiny CNN fixtures.

Checks the round trip is exact, that only what differs from the base encoders is stored (per encoder_tuning mode),
that fp16 checkpoints still predict the same, and that incomplete or pickle-only checkpoints are refused.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import build_tiny_checkpoint
from mmib_cli.checkpoint.assemble import build_model, load_model, save_model, stored_state_dict
from mmib_cli.checkpoint.encoders import ImageBackboneInfo
from mmib_cli.errors import InvalidCheckpoint
from mmib_cli.io.images import load_image

NER_POSTS = [["Kawhi", "Leonard", "visits", "New", "York"], ["look", "at", "Jordan", "today"],
             ["RT", "@", "nba", ":", "wow"]]
RE_ITEMS = [(["Kawhi", "Leonard", "plays", "for", "the", "Raptors"], (0, 2), (5, 6)),
            (["Obama", "and", "Biden", "at", "lunch"], (0, 1), (2, 3))]



def _batch(loaded, task: str, images: list[Path] | None) -> dict[str, torch.Tensor]:
    featurizer = loaded.featurizer
    if task == "ner":
        windows = [w for ws in featurizer.encode_ner(NER_POSTS) for w in ws]
    else:
        windows = featurizer.encode_re_batch(RE_ITEMS)
    batch = featurizer.collate(windows, task)
    if images and loaded.image_info is not None:
        info = loaded.image_info
        pixels = [load_image(images[i % len(images)], image_size=info.image_size, mean=info.mean, std=info.std)
                  for i in range(len(windows))]
        present = torch.tensor([True] * (len(windows) - 1) + [False])  # the last row takes the no-image path
        batch.update(pixel_values=torch.stack(pixels), image_present=present)
    return batch


@torch.inference_mode()
def _logits(loaded, task: str, images: list[Path] | None = None) -> torch.Tensor:
    loaded.model.eval()
    return loaded.model(**_batch(loaded, task, images)).logits


def _stored_keys(directory: Path) -> set[str]:
    with safe_open(str(directory / "model.safetensors"), framework="pt") as handle:
        return set(handle.keys())


def _new(task: str, text_dir: Path, *, with_images: bool = True, **overrides):
    from mmib_cli.model import MMIBConfig

    torch.manual_seed(0)
    values = dict(task=task, hidden_size=32, image_feature_dim=16, latent_size=16, num_attention_heads=2,
                  text_encoder={"source": "path", "path": str(text_dir)},
                  image_encoder={"source": "tiny-cnn"} if with_images else {"source": "none"},
                  use_image=with_images, trained_with_images=with_images, max_length=32, stride=8)
    values.update(overrides)
    return build_model(MMIBConfig(**values), load_image_backbone=with_images)


def _perturb(module: torch.nn.Module, seed: int = 1) -> None:
    """Move every parameter away from its initial value, so a tensor that is not restored changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


# --------------------------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("task", ["ner", "re"])
def test_roundtrip_gives_identical_outputs(task, tiny_bert_dir, sample_images, tmp_path):
    images = [sample_images["red"], sample_images["blue"]]
    original = _new(task, tiny_bert_dir)
    _perturb(original.model)  # a "trained" model: text encoder, backbone and heads all differ from their init
    expected = _logits(original, task, images)
    save_model(original, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["task"] == task and config["format_version"] == 1 and "mmib_version" in config

    loaded = load_model(tmp_path / "ckpt")
    assert not loaded.model.training and loaded.directory == tmp_path / "ckpt"
    assert torch.equal(_logits(loaded, task, images), expected)
    assert torch.equal(_logits(loaded, task, images), expected)  # deterministic in eval mode
    assert torch.equal(_logits(loaded, task, None), _logits(original, task, None))  # no-image path too


def test_roundtrip_ner_decode_identical(tiny_bert_dir, tmp_path):
    original = _new("ner", tiny_bert_dir, with_images=False)
    _perturb(original.model)
    batch = _batch(original, "ner", None)
    emissions = _logits(original, "ner")
    tags, marginals = original.model.decode(emissions, batch["word_mask"])
    save_model(original, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    tags2, marginals2 = loaded.model.decode(_logits(loaded, "ner"), batch["word_mask"])
    assert tags2 == tags and torch.equal(marginals2, marginals)


def test_text_only_checkpoint_loads_without_backbone(tiny_bert_dir, tmp_path):
    original = _new("ner", tiny_bert_dir, with_images=False)
    save_model(original, tmp_path / "ckpt")
    assert not any(k.startswith("image_backbone.") for k in _stored_keys(tmp_path / "ckpt"))
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.model.image_backbone is None and loaded.image_info is None
    # resuming training needs the same (absent) backbone
    assert load_model(tmp_path / "ckpt", for_inference=False).model.image_backbone is None


# --------------------------------------------------------------------------------------------------- what is stored
def _text_params(loaded) -> dict[str, torch.nn.Parameter]:
    return {f"text_encoder.{n}": p for n, p in loaded.model.text_encoder.named_parameters()}


def test_frozen_text_encoder_is_not_stored(tiny_bert_dir, tmp_path):
    original = _new("ner", tiny_bert_dir, encoder_tuning="frozen")
    save_model(original, tmp_path / "ckpt")
    keys = _stored_keys(tmp_path / "ckpt")
    assert not any(k.startswith("text_encoder.") for k in keys)
    head = {n for n, _ in original.model.named_parameters() if not n.startswith(("text_encoder.", "image_backbone."))}
    assert head <= keys  # every MMIB layer and head
    assert {"crf.transitions", "classifier.weight", "no_image_tokens"} <= keys
    assert any(k.startswith("image_backbone.") for k in keys)  # tiny-cnn is not a pinned base: stored
    text_bytes = sum(p.numel() * 4 for p in _text_params(original).values())
    assert (tmp_path / "ckpt" / "model.safetensors").stat().st_size < text_bytes  # far smaller than the encoder
    loaded = load_model(tmp_path / "ckpt")
    assert torch.equal(_logits(loaded, "ner"), _logits(original, "ner"))


def test_full_tuning_stores_every_text_parameter(tiny_bert_dir, tmp_path):
    original = _new("re", tiny_bert_dir)  # encoder_tuning "full" is the default
    save_model(original, tmp_path / "ckpt")
    stored_text = {k for k in _stored_keys(tmp_path / "ckpt") if k.startswith("text_encoder.")}
    assert stored_text == set(_text_params(original))  # parameters only: base buffers (position ids) are rebuilt


def test_top1_stores_exactly_the_last_layer(tiny_bert_dir, tmp_path):
    original = _new("ner", tiny_bert_dir, encoder_tuning="top:1")
    layers = original.model.text_encoder.encoder.layer
    assert len(layers) == 2
    _perturb(layers[1])
    save_model(original, tmp_path / "ckpt")
    stored_text = {k for k in _stored_keys(tmp_path / "ckpt") if k.startswith("text_encoder.")}
    last = {f"text_encoder.encoder.layer.1.{n}" for n, _ in layers[1].named_parameters()}
    assert stored_text == last
    loaded = load_model(tmp_path / "ckpt")
    assert torch.equal(_logits(loaded, "ner"), _logits(original, "ner"))


def test_lora_stores_only_adapters(tiny_bert_dir, tmp_path):
    pytest.importorskip("peft")
    original = _new("ner", tiny_bert_dir, encoder_tuning="lora:4")
    lora = {n: p for n, p in _text_params(original).items() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    with torch.no_grad():  # LoRA B starts at zero: make the adapters matter before saving
        for param in lora.values():
            param.add_(0.1)
    save_model(original, tmp_path / "ckpt")
    stored_text = {k for k in _stored_keys(tmp_path / "ckpt") if k.startswith("text_encoder.")}
    assert stored_text == set(lora)
    loaded = load_model(tmp_path / "ckpt")
    assert torch.equal(_logits(loaded, "ner"), _logits(original, "ner"))


def test_wider_lora_computes_the_same_until_trained(tiny_bert_dir):
    from mmib_cli.model.tuning import copy_into_wider_lora

    pytest.importorskip("peft")
    narrow = _new("ner", tiny_bert_dir, encoder_tuning="lora:2")
    _perturb(narrow.model)  # B no longer zero: the adapters matter
    wide = _new("ner", tiny_bert_dir, encoder_tuning="lora:6")
    copy_into_wider_lora(narrow.model, wide.model)
    narrow.model.eval(), wide.model.eval()
    torch.testing.assert_close(_logits(wide, "ner"), _logits(narrow, "ner"))
    a = {n: p for n, p in wide.model.named_parameters() if "lora_A" in n}
    assert a and all(p.shape[0] == 6 and p.requires_grad for p in a.values())
    with torch.no_grad():  # the new ranks are live: moving their B columns changes the output
        for name, param in wide.model.named_parameters():
            if "lora_B" in name:
                param[:, 2:].add_(0.5)
    assert not torch.allclose(_logits(wide, "ner"), _logits(narrow, "ner"))
    with pytest.raises(ValueError, match="cannot copy"):
        copy_into_wider_lora(wide.model, narrow.model)


def test_pinned_frozen_backbone_is_not_stored(tiny_bert_dir):
    original = _new("re", tiny_bert_dir)
    pinned = ImageBackboneInfo(16, 32, (0.5,) * 3, (0.5,) * 3, pinned=True)
    assert not any(k.startswith("image_backbone.") for k in stored_state_dict(original.model, pinned))
    assert any(k.startswith("image_backbone.") for k in stored_state_dict(original.model, original.image_info))
    tuned = _new("re", tiny_bert_dir, freeze_image_backbone=False)  # a fine-tuned pinned backbone must be stored
    assert any(k.startswith("image_backbone.") for k in stored_state_dict(tuned.model, pinned))


# --------------------------------------------------------------------------------------------------- fp16
def test_fp16_checkpoint_predicts_nearly_the_same(tiny_bert_dir, sample_images, tmp_path):
    images = [sample_images["green"]]
    original = _new("ner", tiny_bert_dir)
    _perturb(original.model)
    save_model(original, tmp_path / "fp32")
    save_model(original, tmp_path / "fp16", dtype=torch.float16)
    tensors = load_file(str(tmp_path / "fp16" / "model.safetensors"))
    assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
    size16 = (tmp_path / "fp16" / "model.safetensors").stat().st_size
    assert size16 < 0.6 * (tmp_path / "fp32" / "model.safetensors").stat().st_size

    loaded = load_model(tmp_path / "fp16")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())  # computes in float32 again
    expected, got = _logits(original, "ner", images), _logits(loaded, "ner", images)
    assert torch.allclose(got, expected, atol=2e-2, rtol=2e-2)
    batch = _batch(original, "ner", images)
    assert loaded.model.decode(got, batch["word_mask"])[0] == original.model.decode(expected, batch["word_mask"])[0]


# --------------------------------------------------------------------------------------------------- refusals
def _drop_tensor(directory: Path, name: str) -> None:
    tensors = load_file(str(directory / "model.safetensors"))
    assert name in tensors
    del tensors[name]
    save_file(tensors, str(directory / "model.safetensors"))


@pytest.mark.parametrize("name", ["classifier.weight", "crf.transitions", "txt_mean.attention.query.weight",
                                  "image_backbone.body.0.weight"])
def test_missing_tensor_is_invalid(name, tiny_bert_dir, tmp_path):
    directory = build_tiny_checkpoint(tmp_path / "ckpt", "ner", tiny_bert_dir)
    _drop_tensor(directory, name)
    with pytest.raises(InvalidCheckpoint, match=name.replace(".", r"\.")):
        load_model(directory)


def test_missing_fine_tuned_text_tensor_is_invalid(tiny_bert_dir, tmp_path):
    """A fully fine-tuned encoder must not silently fall back to the base weights of one of its tensors."""
    directory = build_tiny_checkpoint(tmp_path / "ckpt", "re", tiny_bert_dir, with_images=False)
    name = "text_encoder.encoder.layer.1.output.dense.weight"
    _drop_tensor(directory, name)
    with pytest.raises(InvalidCheckpoint, match=name.replace(".", r"\.")):
        load_model(directory)


def test_unexpected_tensor_is_invalid(tiny_bert_dir, tmp_path):
    directory = build_tiny_checkpoint(tmp_path / "ckpt", "re", tiny_bert_dir)
    tensors = load_file(str(directory / "model.safetensors"))
    tensors["extra_head.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(InvalidCheckpoint, match="extra_head"):
        load_model(directory)


def test_config_mismatch_is_invalid(tiny_bert_dir, tmp_path):
    directory = build_tiny_checkpoint(tmp_path / "ckpt", "ner", tiny_bert_dir)
    config = json.loads((directory / "config.json").read_text())
    config["latent_size"] = 32  # the stored tensors are 16 wide
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidCheckpoint, match="does not match its config"):
        load_model(directory)


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "model.pt"])
def test_pickle_only_directory_is_refused(filename, tiny_bert_dir, tmp_path, monkeypatch):
    directory = build_tiny_checkpoint(tmp_path / "ckpt", "ner", tiny_bert_dir, with_images=False)
    state = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / filename)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a checkpoint pickle must never be loaded")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(InvalidCheckpoint, match="pickle") as info:
        load_model(directory)
    assert filename in str(info.value) and "safetensors" in str(info.value)


def test_directory_without_weights_is_invalid(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InvalidCheckpoint, match="model.safetensors"):
        load_model(tmp_path)
    with pytest.raises(InvalidCheckpoint, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_load_bundle_gives_typed_task_models(tiny_bundle, tiny_text_only_ner):
    from mmib_cli.checkpoint.bundle import LoadedBundle, load_bundle
    from mmib_cli.checkpoint.assemble import LoadedModel
    from mmib_cli.errors import InvalidCheckpoint

    both = load_bundle(str(tiny_bundle), device="cpu")
    assert isinstance(both, LoadedBundle) and both.label
    assert isinstance(both.ner, LoadedModel) and both.ner.model.config.task == "ner"
    assert isinstance(both.re, LoadedModel) and both.re.model.config.task == "re"
    assert both.require("re") is both.re and both.get("ner") is both.ner
    single = load_bundle(str(tiny_text_only_ner), device="cpu")
    assert single.re is None and single.ner.model.config.task == "ner"
    with pytest.raises(InvalidCheckpoint, match="has no re model"):
        single.require("re")
    with pytest.raises(ValueError, match="task must be one of ner, re"):
        single.get("rel")


# -- invalid config.json: exit 1 "invalid checkpoint ...", before anything is allocated ---------------------------
BAD_CONFIGS = {
    "absurd latent size": lambda c: c.update(latent_size=10**9),
    "absurd hidden size": lambda c: c.update(hidden_size=2**40),
    "string size": lambda c: c.update(hidden_size="32"),
    "labels not a list": lambda c: c.update(labels=5),
    "too many labels": lambda c: c.update(labels=[f"B-X{i}" for i in range(5000)]),
    "label not a string": lambda c: c.update(labels=["O", 1]),
    "NaN weight": lambda c: c.update(beta_ar=float("nan")),
    "infinite weight": lambda c: c.update(beta_ar=float("inf")),
    "string dropout": lambda c: c.update(dropout="0.1"),
    "markers not strings": lambda c: c.update(entity_markers=[1, 2, 3, 4]),
    "task not a string": lambda c: c.update(task=["ner"]),
    "deep spec": lambda c: c.update(text_encoder=json.loads('{"a": ' * 500 + "1" + "}" * 500)),
    "zero relation temperature": lambda c: c.update(relation_temperature=0),
    "relation min score above 1": lambda c: c.update(relation_min_score=1.5),
}


def _write_config(directory: Path, config) -> None:
    text = config if isinstance(config, str) else json.dumps(config)
    (directory / "config.json").write_text(text, encoding="utf-8")


@pytest.fixture()
def checkpoint_copy(tiny_text_only_ner, tmp_path):
    import shutil

    return Path(shutil.copytree(tiny_text_only_ner, tmp_path / "ckpt"))


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_invalid_config_values_are_an_invalid_checkpoint_before_building(case, checkpoint_copy, monkeypatch):
    import mmib_cli.checkpoint.assemble as model_io

    config = json.loads((checkpoint_copy / "config.json").read_text())
    BAD_CONFIGS[case](config)
    _write_config(checkpoint_copy, config)
    monkeypatch.setattr(model_io, "build_model", lambda *a, **k: pytest.fail("built a model from a bad config"))
    with pytest.raises(InvalidCheckpoint, match=r"^invalid checkpoint .*config\.json"):
        load_model(checkpoint_copy)


@pytest.mark.parametrize("text", ['{"task": "ner", "text_encoder": ' + "[" * 100_000 + "]" * 100_000 + "}",
                                  "[1, 2]", "{not json"])
def test_unparsable_config_is_an_invalid_checkpoint(text, checkpoint_copy):
    _write_config(checkpoint_copy, text)
    with pytest.raises(InvalidCheckpoint, match=r"^invalid checkpoint "):
        load_model(checkpoint_copy)


@pytest.mark.parametrize("case", ["absurd latent size", "string size", "NaN weight"])
def test_cli_reports_an_invalid_checkpoint_with_exit_1(case, checkpoint_copy, tmp_path):
    from cli_helpers import invoke

    config = json.loads((checkpoint_copy / "config.json").read_text())
    BAD_CONFIGS[case](config)
    _write_config(checkpoint_copy, config)
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "Obama"}\n')
    result = invoke("annotate", src, "-o", tmp_path / "out.jsonl", "-m", checkpoint_copy, expect=1)
    assert result.stderr.startswith(f"Error: invalid checkpoint {checkpoint_copy}") and "Usage:" not in result.stderr
    assert not (tmp_path / "out.jsonl").exists()
