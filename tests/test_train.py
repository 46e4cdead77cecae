"""`mmib train` and `mmib eval` end to end on the tiny random BERT (CPU, seconds).

A tiny model must learn 16 toy NER sentences and 16 toy RE examples (its loss falls), write a complete checkpoint,
select its best epoch on the valid split only, resume from OUTPUT/last, and `mmib eval` must reproduce the valid F1
the training reported, bit for bit on every run.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli_helpers import invoke, one_torch_thread


PEOPLE = ["john", "mary", "obama", "smith", "david", "paul", "anna", "peter"]
PLACES = ["paris", "london", "berlin", "texas", "tokyo", "boston", "rome", "madrid"]
ORGS = ["google", "nasa", "apple", "fifa", "nba", "microsoft", "intel", "ibm"]
FOOD = ["pizza", "coffee", "pasta", "tea", "bread", "cheese", "rice", "soup"]

# Fast settings under which the tiny models learn the toy data within a few epochs.
NER_ARGS = ["--epochs", "8", "-b", "4", "--lr", "1e-3", "--head-lr", "1e-2", "--patience", "3",
            "--config", "latent_size=32", "--config", "num_attention_heads=2"]
RE_ARGS = ["--epochs", "10", "-b", "4", "--lr", "2e-3", "--head-lr", "2e-3", "--patience", "4",
           "--config", "latent_size=128", "--config", "num_attention_heads=4"]



# --------------------------------------------------------------------------------------------------- toy data
def ner_sentences() -> list[list[tuple[str, str]]]:
    """16 sentences, two patterns, one PER, LOC and ORG each (the second pattern has a two-word PER)."""
    sentences = []
    for i in range(16):
        person, place, org = PEOPLE[i % 8], PLACES[(i * 3) % 8], ORGS[(i * 5) % 8]
        if i % 2 == 0:
            sentences.append([(person, "B-PER"), ("visited", "O"), (place, "B-LOC"), ("with", "O"), (org, "B-ORG")])
        else:
            sentences.append([(org, "B-ORG"), ("hired", "O"), (person, "B-PER"), (PEOPLE[(i + 3) % 8], "I-PER"),
                              ("in", "O"), (place, "B-LOC")])
    return sentences


def write_conll(path: Path, sentences: list[list[tuple[str, str]]], first_id: int = 0) -> Path:
    blocks = [f"IMGID:{first_id + i}\n" + "\n".join(f"{w}\t{t}" for w, t in s) for i, s in enumerate(sentences)]
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


# each relation has its own wording, tail type and tail position (the tiny random BERT mixes context weakly)
RE_TEMPLATES = [("{h} works for {t}", ORGS, "/per/org/member_of"),
                ("{h} lives in the city of {t}", PLACES, "/per/loc/place_of_residence"),
                ("{h} married {t}", PEOPLE, "/per/per/couple"),
                ("{h} really likes eating {t}", FOOD, "None")]


def re_examples() -> list[dict]:
    """16 MNRE instances, four each of three relations and None."""
    rows = []
    for i in range(16):
        template, tails, relation = RE_TEMPLATES[i % 4]
        head, tail = PEOPLE[i % 8], tails[(i * 3 + 1) % 8]
        words = template.format(h=head, t=tail).split()
        rows.append({"token": words, "h": {"name": head, "pos": [0, 1]},
                     "t": {"name": tail, "pos": [len(words) - 1, len(words)]},
                     "img_id": f"{i}.jpg", "relation": relation})
    return rows


def write_mnre(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(repr(r) for r in rows) + "\n", encoding="utf-8")  # dict literals, as MNRE
    return path


def train_cli(task: str, train: Path, valid: Path, output: Path, *extra: str, text_dir: Path):
    result = invoke("train", task, "--train", str(train), "--valid", str(valid), "--text-encoder", str(text_dir),
                    "--image-encoder", "none", "-o", str(output), *extra, expect=0)
    return json.loads(result.stdout), result


def eval_cli(task: str, model: Path, data: Path, out_json: Path, *extra: str):
    result = invoke("eval", task, "--model", str(model), "--data", str(data), "--output-json", str(out_json),
                    *extra, expect=0)
    return json.loads(out_json.read_text()), result


# --------------------------------------------------------------------------------------------------- trained runs
@pytest.fixture(scope="module")
def ner_run(tiny_bert_dir, tmp_path_factory):
    """One NER training: train on 16 toy sentences, select on a valid file holding 8 of them."""
    root = tmp_path_factory.mktemp("train-ner")
    sentences = ner_sentences()
    train = write_conll(root / "train.txt", sentences)
    valid = write_conll(root / "valid.txt", sentences[:8])
    with one_torch_thread():  # module-scoped: set up before the autouse per-test fixture applies
        summary, result = train_cli("ner", train, valid, root / "ckpt", *NER_ARGS, text_dir=tiny_bert_dir)
    return {"root": root, "train": train, "valid": valid, "out": root / "ckpt", "summary": summary,
            "stderr": result.stderr}


@pytest.fixture(scope="module")
def re_run(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("train-re")
    data = write_mnre(root / "re.txt", re_examples())
    with one_torch_thread():  # module-scoped: set up before the autouse per-test fixture applies
        summary, result = train_cli("re", data, data, root / "ckpt", *RE_ARGS, text_dir=tiny_bert_dir)
    return {"root": root, "data": data, "out": root / "ckpt", "summary": summary, "stderr": result.stderr}


CHECKPOINT_FILES = ("config.json", "model.safetensors", "metrics.json", "training_args.json")


def _learned(out: Path, summary: dict) -> None:
    """Training learned (its loss fell) and kept the epoch with the best valid F1 (no fixed score: seeds and
    library versions move it)."""
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert history[-1]["task_loss"] < history[0]["task_loss"], history
    assert summary["best_valid_f1"] == max(h["valid_f1"] for h in history)


def test_ner_training_learns_and_saves_the_best_epoch(ner_run, tiny_bert_dir):
    out, summary = ner_run["out"], ner_run["summary"]
    _learned(out, summary)
    assert summary["output"] == str(out) and 1 <= summary["best_epoch"] <= summary["epochs_run"] <= 8
    for name in CHECKPOINT_FILES:
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "ner" and config["labels"][0] == "O" and config["trained_with_images"] is False
    assert config["text_encoder"] == {"source": "path", "path": str(Path(tiny_bert_dir).resolve())}
    args = json.loads((out / "training_args.json").read_text())
    assert args["task"] == "ner" and args["head_lr"] == 1e-2 and args["config"]["latent_size"] == 32
    assert (out / "last" / "config.json").is_file()  # the resumable state
    assert re.search(r"epoch 1: \{", ner_run["stderr"])  # per-epoch log lines on stderr, stdout is the summary


def test_model_selection_uses_valid_only(ner_run):
    metrics = json.loads((ner_run["out"] / "metrics.json").read_text())
    assert set(metrics) == {"best_epoch", "valid", "history"}
    assert "test" not in json.dumps(metrics).lower()
    assert metrics["valid"]["examples"] == 8  # the valid file, not the 16 training sentences
    assert metrics["valid"]["f1"] == max(h["valid_f1"] for h in metrics["history"])
    history = metrics["history"]
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    assert len(history) == ner_run["summary"]["epochs_run"]  # every epoch, not only up to the best
    best = max(history, key=lambda h: (h["valid_f1"], -h["epoch"]))  # first epoch with the top valid F1
    assert metrics["best_epoch"] == best["epoch"] == ner_run["summary"]["best_epoch"]
    assert all(k.startswith("valid_") for k in best if "f1" in k or "precision" in k or "recall" in k)


def test_eval_reproduces_training_f1(ner_run, tmp_path):
    metrics, result = eval_cli("ner", ner_run["out"], ner_run["valid"], tmp_path / "eval.json")
    reported = json.loads((ner_run["out"] / "metrics.json").read_text())["valid"]
    assert metrics["f1"] == reported["f1"]
    assert metrics["precision"] == reported["precision"] and metrics["recall"] == reported["recall"]
    assert metrics["task"] == "ner" and metrics["examples"] == 8 and metrics["model"] == str(ner_run["out"])
    assert set(metrics["per_type"]) == {"PER", "LOC", "ORG"}
    assert "micro" in result.stdout and "PER" in result.stdout  # the rich table
    # another file is scored as itself, not as the valid split
    on_train, _ = eval_cli("ner", ner_run["out"], ner_run["train"], tmp_path / "train.json")
    assert on_train["examples"] == 16 and 0.0 <= on_train["f1"] <= 100.0


def test_eval_is_bit_for_bit_deterministic(ner_run, tmp_path):
    eval_cli("ner", ner_run["out"], ner_run["train"], tmp_path / "a.json")
    eval_cli("ner", ner_run["out"], ner_run["train"], tmp_path / "b.json", "-b", "3")  # other batching, same result
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_eval_output_json_is_never_overwritten_without_force(ner_run, tmp_path):
    out = tmp_path / "metrics.json"
    out.write_text("keep me")
    result = invoke("eval", "ner", "--model", ner_run["out"], "--data", ner_run["valid"], "--output-json", out,
                    expect=2)
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert out.read_text() == "keep me"
    metrics, _ = eval_cli("ner", ner_run["out"], ner_run["valid"], out, "--force")
    assert metrics["f1"] == 100.0


def test_render_metrics_returns_the_table_and_prints_nothing(capsys):
    from mmib_cli.workflows.evaluate import render_metrics

    text = render_metrics({"task": "ner", "data": "d.txt", "precision": 50.0, "recall": 25.0, "f1": 33.33,
                           "support": 4, "per_type": {"PER": {"precision": 50.0, "recall": 25.0, "f1": 33.33,
                                                              "support": 4}}})
    assert capsys.readouterr().out == ""
    assert "micro" in text and "33.33" in text and "PER" in text


def test_eval_library_api_matches_cli(ner_run, tmp_path):
    from mmib_cli.workflows.evaluate import evaluate_file

    cli_metrics, _ = eval_cli("ner", ner_run["out"], ner_run["valid"], tmp_path / "cli.json")
    metrics = evaluate_file("ner", model=str(ner_run["out"]), data=ner_run["valid"])
    assert json.loads(json.dumps(metrics)) == {**cli_metrics, "data": str(ner_run["valid"])}


def test_re_training_learns_and_eval_agrees(re_run, tmp_path):
    out, summary = re_run["out"], re_run["summary"]
    _learned(out, summary)
    for name in CHECKPOINT_FILES:
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["labels"][0] == "None"
    metrics, result = eval_cli("re", out, re_run["data"], tmp_path / "a.json")
    assert metrics["f1"] == json.loads((out / "metrics.json").read_text())["valid"]["f1"]
    assert 0.0 <= metrics["accuracy"] <= 100.0 and metrics["examples"] == 16
    assert "accuracy" in result.stdout
    eval_cli("re", out, re_run["data"], tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_re_training_with_weighted_reversed_pairs(tiny_bert_dir, tmp_path):
    """`--reverse-pairs --reverse-pairs-weight`: the reversed `parent` pairs train as weighted None rows."""
    rows = [{"token": f"{p} is the father of {c}".split(), "h": {"name": p, "pos": [0, 1]},
             "t": {"name": c, "pos": [5, 6]}, "img_id": f"{i}.jpg", "relation": "/per/per/parent"}
            for i, (p, c) in enumerate(zip(PEOPLE, PEOPLE[1:] + PEOPLE[:1]))]
    data = write_mnre(tmp_path / "re.txt", rows)
    summary, result = train_cli("re", data, data, tmp_path / "ckpt", *RE_ARGS, "--epochs", "1", "--reverse-pairs",
                                "--reverse-pairs-weight", "0.25", text_dir=tiny_bert_dir)
    assert "8 reversed pairs added (8 of them None, weight 0.25)" in result.stderr
    args = json.loads((tmp_path / "ckpt" / "training_args.json").read_text())
    assert args["reverse_pairs"] is True and args["reverse_pairs_weight"] == 0.25
    invoke("train", "re", "--train", str(data), "--valid", str(data), "-o", str(tmp_path / "x"),
           "--reverse-pairs-weight", "0", expect=2)


def test_ner_training_with_mention_swaps(tiny_bert_dir, tmp_path):
    """`--mention-swaps` doubles the training sentences and is recorded in the run's arguments."""
    train = write_conll(tmp_path / "train.txt", ner_sentences())
    summary, result = train_cli("ner", train, train, tmp_path / "ckpt", *NER_ARGS, "--epochs", "1",
                                "--mention-swaps", "--seed", "3", text_dir=tiny_bert_dir)
    assert "16 copies with swapped mentions added (seed 3)" in result.stderr
    assert "train: 32 windows from 32 posts" in result.stderr
    assert json.loads((tmp_path / "ckpt" / "training_args.json").read_text())["mention_swaps"] is True


def test_eval_missing_images_directory_is_a_usage_error(ner_run, tmp_path):
    result = invoke("eval", "ner", "--model", str(ner_run["out"]), "--data", str(ner_run["valid"]),
                    "--images", str(tmp_path / "nowhere"), expect=2)
    assert "nowhere" in result.stderr


def test_eval_wrong_task_is_an_error(re_run, tmp_path):
    conll = write_conll(tmp_path / "x.txt", ner_sentences()[:2])
    result = invoke("eval", "ner", "--model", str(re_run["out"]), "--data", str(conll), expect=1)
    assert "has no ner model" in result.stderr


# --------------------------------------------------------------------------------------------------- resume
def test_resume_continues_from_last(tiny_bert_dir, tmp_path):
    sentences = ner_sentences()
    train = write_conll(tmp_path / "train.txt", sentences)
    args = ["--patience", "10", "--config", "latent_size=32", "--config", "num_attention_heads=2", "-b", "8",
            "--lr", "1e-3", "--head-lr", "1e-2"]
    first, _ = train_cli("ner", train, train, tmp_path / "ckpt", "--epochs", "2", *args, text_dir=tiny_bert_dir)
    assert first["epochs_run"] == 2
    history = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())["history"]
    state = json.loads((tmp_path / "ckpt" / "last" / "trainer_state.json").read_text())
    assert state["epoch"] == 2 and (tmp_path / "ckpt" / "last" / "trainer_state.pt").is_file()

    second, result = train_cli("ner", train, train, tmp_path / "ckpt", "--epochs", "4", "--resume", *args,
                               text_dir=tiny_bert_dir)
    assert "resuming after epoch 2" in result.stderr
    ran = [int(n) for n in re.findall(r"epoch (\d+): \{", result.stderr)]
    assert ran == [3, 4]  # it did not start again from epoch 1
    assert second["epochs_run"] == 4
    resumed = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in resumed] == [1, 2, 3, 4]
    assert resumed[:2] == history  # the first two epochs are the first run's, untouched
    assert resumed[3]["task_loss"] < history[0]["task_loss"]  # training went on from where it stopped
    assert json.loads((tmp_path / "ckpt" / "last" / "trainer_state.json").read_text())["epoch"] == 4

    # resuming a finished run trains nothing and reports the same best epoch
    third, result = train_cli("ner", train, train, tmp_path / "ckpt", "--epochs", "4", "--resume", *args,
                              text_dir=tiny_bert_dir)
    assert not re.findall(r"epoch (\d+): \{", result.stderr)
    assert third["best_epoch"] == second["best_epoch"] and third["best_valid_f1"] == second["best_valid_f1"]


# --------------------------------------------------------------------------------------------------- switches
def _images_for(directory: Path, count: int) -> Path:
    from PIL import Image

    directory.mkdir()
    for i in range(count):
        Image.new("RGB", (40, 40), ((60 * i) % 256, 90, (200 - 30 * i) % 256)).save(directory / f"{i}.jpg")
    return directory


@pytest.mark.parametrize("switches", [(), ("use_kl=false",), ("use_ar=false",), ("use_kl=false", "use_ar=false")])
def test_kl_and_ar_switches(switches, tiny_bert_dir, tmp_path):
    train = write_conll(tmp_path / "train.txt", ner_sentences()[:8])
    images = _images_for(tmp_path / "images", 8)
    overrides = [x for s in switches for x in ("--config", s)]
    result = invoke("train", "ner", "--train", str(train), "--valid", str(train), "--images", str(images),
                    "--text-encoder", str(tiny_bert_dir), "--image-encoder", "tiny-cnn", "-o", str(tmp_path / "c"),
                    "--epochs", "1", "-b", "4", "--config", "latent_size=16", "--config", "num_attention_heads=2",
                    *overrides, expect=0)
    assert json.loads(result.stdout)["epochs_run"] == 1
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["trained_with_images"] is True
    assert config["use_kl"] is ("use_kl=false" not in switches)
    assert config["use_ar"] is ("use_ar=false" not in switches)
    record = json.loads((tmp_path / "c" / "metrics.json").read_text())["history"][0]
    kl_on, ar_on = config["use_kl"], config["use_ar"]
    if kl_on:
        assert record["kl_text"] > 0 and record["kl_image"] > 0
    else:
        assert record["kl_text"] == record["kl_image"] == 0
    assert (record["ar_loss"] > 0) if ar_on else (record["ar_loss"] == 0)
    expected = record["task_loss"] + (record["kl_text"] + record["kl_image"] if kl_on else 0) + \
        (record["ar_loss"] if ar_on else 0)
    assert record["loss"] == pytest.approx(expected, abs=1e-3)  # betas are 1: the total is the plain sum


def test_missing_images_directory_is_a_usage_error(tiny_bert_dir, tmp_path):
    train = write_conll(tmp_path / "train.txt", ner_sentences()[:2])
    result = invoke("train", "ner", "--train", str(train), "--valid", str(train), "--images",
                    str(tmp_path / "nowhere"), "--text-encoder", str(tiny_bert_dir), "--image-encoder", "tiny-cnn",
                    "-o", str(tmp_path / "c"), expect=2)
    assert "nowhere" in result.stderr and not (tmp_path / "c").exists()


def test_images_dir_without_matching_images_trains_text_only(tiny_bert_dir, tmp_path):
    train = write_conll(tmp_path / "train.txt", ner_sentences()[:4], first_id=100)  # ids 100..103: no such files
    images = _images_for(tmp_path / "images", 2)
    result = invoke("train", "ner", "--train", str(train), "--valid", str(train), "--images", str(images),
                    "--text-encoder", str(tiny_bert_dir), "--image-encoder", "tiny-cnn", "-o", str(tmp_path / "c"),
                    "--epochs", "1", "--config", "latent_size=16", "--config", "num_attention_heads=2", expect=0)
    assert "no training image found" in result.stderr
    assert json.loads((tmp_path / "c" / "config.json").read_text())["trained_with_images"] is False
