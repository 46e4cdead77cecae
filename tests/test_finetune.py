"""Learning from corrections: `mmib train --init CHECKPOINT --train <Label Studio export>` on a tiny model.

A post the tiny model tags wrongly is corrected in a Label Studio export (with other reviewed posts of the same
kind); fine-tuning from the model must then tag it right, report before/after scores on the held-out corrections
and on the --valid benchmark, and write a checkpoint that `mmib annotate -m DIR` and `mmib eval` use.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import invoke, write_jsonl

PEOPLE = ["john", "mary", "obama", "smith", "david", "paul", "anna", "peter"]
PLACES = ["paris", "london", "berlin", "texas", "tokyo", "boston", "rome", "madrid"]
TARGET = "obama visited berlin"
FAST = ["--epochs", "15", "-b", "4", "--lr", "1e-3", "--head-lr", "1e-2", "--patience", "15", "--seed", "0"]
BENCHMARK_MARGIN = 25.0
"""Largest F1 drop (points) on the --valid benchmark that the tiny-model test accepts (a random tiny model's F1 on
the three-sentence benchmark is noisy; the real check of forgetting is the reported number itself)."""


def _region(rid: str, text: str, surface: str, label: str) -> dict:
    start = text.index(surface)
    return {"id": rid, "from_name": "label", "to_name": "text", "type": "labels",
            "value": {"start": start, "end": start + len(surface), "text": surface, "labels": [label]}}


def reviewed_task(task_id: int, person: str, place: str) -> dict:
    """A task as Label Studio exports it after review: the model had tagged nothing, the reviewer added PER/LOC."""
    text = f"{person} visited {place}"
    result = [_region("a", text, person, "PER"), _region("b", text, place, "LOC")]
    return {"id": task_id, "data": {"text": text, "image": ""}, "predictions": [task_id],
            "annotations": [{"id": task_id, "result": result, "was_cancelled": False,
                             "prediction": {"id": task_id, "model_version": "tiny", "result": []}}]}


def annotate_entities(model: Path, tmp_path: Path, text: str) -> list[tuple[str, str]]:
    posts = write_jsonl(tmp_path / "post.jsonl", [{"id": "t", "text": text}])
    out = tmp_path / f"annotated-{model.name}.jsonl"
    result = invoke("annotate", posts, "-o", out, "-m", model, "--force", "--no-progress")
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    return [(e["text"], e["label"]) for e in record["entities"]]


@pytest.fixture()
def export_file(tmp_path) -> Path:
    tasks = [reviewed_task(i, p, q) for i, (p, q) in enumerate(
        [(p, q) for p in PEOPLE for q in PLACES if (p, q) != ("obama", "berlin")][:23], 1)]
    tasks.append(reviewed_task(24, "obama", "berlin"))
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks), encoding="utf-8")
    return path


@pytest.mark.slow
def test_corrections_fix_the_post_and_scores_are_reported(tiny_text_only_ner, export_file, conll_file, tmp_path):
    before = annotate_entities(tiny_text_only_ner, tmp_path, TARGET)
    assert before != [("obama", "PER"), ("berlin", "LOC")]  # the random tiny model gets the post wrong
    out = tmp_path / "corrected"
    result = invoke("train", "ner", "--init", tiny_text_only_ner, "--train", export_file, "--valid", conll_file,
                    "-o", out, "--holdout", "0.25", *FAST)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["corrections"]["posts"] == 24 and summary["corrections"]["holdout_posts"] == 6
    held = summary["scores"]["holdout"]
    assert held["examples"] == 6 and held["after_f1"] > held["before_f1"] and held["after_f1"] == 100.0
    bench = summary["scores"][f"valid:{conll_file}"]
    assert bench["after_f1"] >= bench["before_f1"] - BENCHMARK_MARGIN
    assert annotate_entities(out, tmp_path, TARGET) == [("obama", "PER"), ("berlin", "LOC")]
    # the reported numbers are those `mmib eval` gives for the written checkpoint
    evaluated = invoke("eval", "ner", "--model", out, "--data", out / "corrections" / "holdout.txt",
                       "--output-json", tmp_path / "m.json")
    assert evaluated.exit_code == 0 and json.loads((tmp_path / "m.json").read_text())["f1"] == held["after_f1"]
    saved = json.loads((out / "finetune.json").read_text())
    assert saved["init"] == str(tiny_text_only_ner) and saved["scores"]["holdout"]["after"]["f1"] == 100.0


def test_a_label_studio_export_needs_init(export_file, tmp_path):
    result = invoke("train", "ner", "--train", export_file, "-o", tmp_path / "x")
    assert result.exit_code == 2 and "--init" in result.output


def test_plain_training_still_needs_valid(conll_file, tmp_path):
    result = invoke("train", "ner", "--train", conll_file, "-o", tmp_path / "x")
    assert result.exit_code == 2 and "--valid" in result.output


def test_init_takes_the_task_part_and_refuses_the_other_task(tiny_bundle, tiny_text_only_ner):
    from mmib_cli.workflows.train import load_init_model

    assert load_init_model(str(tiny_bundle), "re").model.config.task == "re"
    with pytest.raises(ValueError, match="is a ner checkpoint"):
        load_init_model(str(tiny_text_only_ner), "re")
    with pytest.raises(ValueError, match="architecture"):
        load_init_model(str(tiny_text_only_ner), "ner", {"latent_size": 8})


def test_unannotated_export_is_refused_with_the_fallback_named(tmp_path, tiny_text_only_ner):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps([{"id": 1, "data": {"text": "obama visited berlin"}, "predictions": [1]}]))
    result = invoke("train", "ner", "--init", tiny_text_only_ner, "--train", path, "-o", tmp_path / "x")
    assert result.exit_code == 2 and "--use-predictions" in result.output
