"""`mmib train --init` (continue from a checkpoint or a bundle's part) and `--dtype` in training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import invoke, one_torch_thread
from test_train import NER_ARGS, eval_cli, ner_sentences, train_cli, write_conll

from mmib_cli.workflows.train import _AutocastPlan


@pytest.fixture(scope="module")
def base_run(tiny_bert_dir, tmp_path_factory):
    """A tiny NER checkpoint trained for two epochs: the starting point of the --init runs."""
    root = tmp_path_factory.mktemp("init-base")
    train = write_conll(root / "train.txt", ner_sentences())
    args = [a if a != "8" else "2" for a in NER_ARGS]  # --epochs 2
    with one_torch_thread():
        train_cli("ner", train, train, root / "base", *args, text_dir=tiny_bert_dir)
    return {"root": root, "train": train, "ckpt": root / "base"}


def _init_cli(task: str, init: Path | str, train: Path, output: Path, *extra: str, expect: int = 0):
    return invoke("train", task, "--init", str(init), "--train", str(train), "--valid", str(train),
                  "-o", str(output), "--epochs", "1", "-b", "4", *extra, expect=expect)


def test_init_starts_from_the_checkpoint_weights(base_run, tmp_path):
    base = base_run["ckpt"]
    base_metrics, _ = eval_cli("ner", base, base_run["train"], tmp_path / "base.json")
    # learning rates 0: the continued model must be exactly the checkpoint (a fresh model would score differently)
    result = _init_cli("ner", base, base_run["train"], tmp_path / "cont", "--lr", "0", "--head-lr", "0")
    summary = json.loads(result.stdout)
    assert summary["best_valid_f1"] == base_metrics["f1"]
    assert f"starting from {base}" in result.stderr
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "cont" / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    config = json.loads((tmp_path / "cont" / "config.json").read_text())
    assert config["latent_size"] == 32  # the checkpoint's architecture, not the CLI defaults


def test_a_continuation_that_never_beats_the_start_leaves_the_starting_model(base_run, tmp_path):
    """--init scores the starting model as epoch 0: training on all-O labels worsens valid, so the output stays it."""
    base = base_run["ckpt"]
    base_metrics, _ = eval_cli("ner", base, base_run["train"], tmp_path / "base.json")
    assert base_metrics["f1"] > 0
    blank = write_conll(tmp_path / "blank.txt", [[(w, "O") for w, _ in s] for s in ner_sentences()])
    out = tmp_path / "cont"
    result = invoke("train", "ner", "--init", str(base), "--train", str(blank), "--valid", str(base_run["train"]),
                    "-o", str(out), "--epochs", "2", "-b", "4", "--lr", "1e-3", "--head-lr", "1e-2", expect=0)
    summary = json.loads(result.stdout)
    assert summary["best_epoch"] == 0 and summary["best_valid_f1"] == base_metrics["f1"]
    assert "no epoch beat the starting model" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2] and metrics["best_epoch"] == 0
    assert all(h["valid_f1"] < base_metrics["f1"] for h in metrics["history"][1:])
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the starting weights, not the last epoch's
    last = load_file(out / "last" / "model.safetensors")
    assert any(not torch.equal(before[k], last[k].to(before[k].dtype)) for k in before)
    evaluated, _ = eval_cli("ner", out, base_run["train"], tmp_path / "out.json")
    assert evaluated["f1"] == base_metrics["f1"]
    # --no-select-init: the best trained epoch, worse or not (what a weight average of start and run wants)
    result = invoke("train", "ner", "--init", str(base), "--train", str(blank), "--valid", str(base_run["train"]),
                    "-o", str(tmp_path / "trained"), "--epochs", "1", "-b", "4", "--lr", "1e-3", "--head-lr", "1e-2",
                    "--no-select-init", expect=0)
    assert json.loads(result.stdout)["best_epoch"] == 1 and "no epoch beat" not in result.stderr
    trained = load_file(tmp_path / "trained" / "model.safetensors")
    assert any(not torch.equal(before[k], trained[k]) for k in before)
    assert json.loads((tmp_path / "trained" / "training_args.json").read_text())["select_init"] is False


def test_init_takes_the_task_part_of_a_bundle(base_run, tmp_path):
    from mmib_cli.storage.format import write_bundle

    bundle = tmp_path / "bundle"
    write_bundle(bundle, {"ner": base_run["ckpt"]})
    result = _init_cli("ner", bundle, base_run["train"], tmp_path / "cont", "--lr", "0", "--head-lr", "0")
    assert f"starting from {bundle}" in result.stderr
    result = _init_cli("re", bundle, base_run["train"], tmp_path / "re", expect=2)
    assert "has no re part" in result.stderr


def test_init_refuses_the_other_task_and_architecture_overrides(base_run, tmp_path):
    result = _init_cli("re", base_run["ckpt"], base_run["train"], tmp_path / "re", expect=2)
    assert "is a ner checkpoint, not re" in result.stderr
    result = _init_cli("ner", base_run["ckpt"], base_run["train"], tmp_path / "x", "--config", "latent_size=16",
                       expect=2)
    assert "latent_size" in result.stderr and "keeps its checkpoint's architecture" in result.stderr


def test_init_may_change_featurisation_settings(base_run, tmp_path):
    _init_cli("ner", base_run["ckpt"], base_run["train"], tmp_path / "cont", "--config", "hashtag_words=true")
    assert json.loads((tmp_path / "cont" / "config.json").read_text())["hashtag_words"] is True
    assert json.loads((base_run["ckpt"] / "config.json").read_text())["hashtag_words"] is True  # new runs: on


def test_init_may_widen_lora_adapters(tiny_bert_dir, tmp_path):
    pytest.importorskip("peft")
    train = write_conll(tmp_path / "train.txt", ner_sentences())
    args = [a if a != "8" else "1" for a in NER_ARGS]  # --epochs 1
    train_cli("ner", train, train, tmp_path / "base", *args, "--config", "encoder_tuning=lora:2",
              text_dir=tiny_bert_dir)
    base_metrics, _ = eval_cli("ner", tmp_path / "base", train, tmp_path / "base.json")
    result = _init_cli("ner", tmp_path / "base", train, tmp_path / "wide", "--lr", "0", "--head-lr", "0",
                       "--config", "encoder_tuning=lora:4")
    assert json.loads(result.stdout)["best_valid_f1"] == base_metrics["f1"]  # same function at the start
    assert "widened from lora:2 to lora:4" in result.stderr
    assert json.loads((tmp_path / "wide" / "config.json").read_text())["encoder_tuning"] == "lora:4"
    a = [t for k, t in load_file(tmp_path / "wide" / "model.safetensors").items() if "lora_A" in k]
    assert a and all(t.shape[0] == 4 for t in a)
    for narrower in ("lora:1", "full", "lora:x"):
        result = _init_cli("ner", tmp_path / "base", train, tmp_path / "x", "--config",
                           f"encoder_tuning={narrower}", expect=2)
        assert "widens its LoRA adapters" in result.stderr


def test_init_missing_checkpoint_is_an_error(base_run, tmp_path):
    result = _init_cli("ner", tmp_path / "nope", base_run["train"], tmp_path / "x", expect=1)
    assert "nope" in result.stderr


@pytest.mark.parametrize(("spec", "expected"), [("auto", None), ("float32", None), ("bfloat16", torch.bfloat16),
                                                ("float16", torch.float16)])
def test_train_dtype_selects_the_autocast_dtype_on_cpu(spec, expected):
    plan = _AutocastPlan.for_run(spec, torch.device("cpu"))
    assert plan.dtype == expected
    assert not plan.scaler().is_enabled()  # loss scaling is for float16 on CUDA only
    with plan.autocast():
        out = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert out.dtype == (expected or torch.float32)


def test_train_dtype_bfloat16_runs_on_cpu(base_run, tmp_path):
    result = _init_cli("ner", base_run["ckpt"], base_run["train"], tmp_path / "bf16", "--dtype", "bfloat16")
    assert json.loads(result.stdout)["epochs_run"] == 1
