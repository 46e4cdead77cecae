"""Relation-score calibration: temperature fitting, threshold for a precision target, `mmib calibrate`."""
from __future__ import annotations

import json

import pytest
import torch

from cli_helpers import invoke, one_torch_thread
from test_train import RE_ARGS, re_examples, train_cli, write_mnre

from mmib_cli.workflows.calibration import fit_temperature, scaled_probabilities, threshold_for_precision


def _overconfident(n: int, sharpen: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z), reported probabilities softmax(sharpen * z): the right temperature is
    `sharpen`."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 5, generator=generator) * 2
    gold = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
    return torch.softmax(sharpen * logits, -1), gold


@pytest.mark.parametrize("sharpen", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_the_sharpening(sharpen):
    probs, gold = _overconfident(20000, sharpen)
    assert fit_temperature(probs, gold) == pytest.approx(sharpen, rel=0.1)


def test_temperature_never_changes_the_winner():
    probs, _ = _overconfident(200, 3.0)
    assert torch.equal(scaled_probabilities(probs, 3.0).argmax(-1), probs.argmax(-1))


def test_fit_temperature_rejects_bad_shapes():
    with pytest.raises(ValueError, match="gold ids"):
        fit_temperature(torch.ones(3, 2) / 2, torch.zeros(2, dtype=torch.long))


def test_threshold_is_the_lowest_score_that_reaches_the_precision():
    scores = torch.tensor([0.95, 0.9, 0.8, 0.7, 0.6, 0.99])
    predicted = torch.tensor([1, 2, 1, 2, 1, 0])  # the last one is None: never kept
    gold = torch.tensor([1, 2, 2, 2, 0, 1])  # right, right, wrong, right, wrong
    choice = threshold_for_precision(scores, predicted, gold, none_id=0, target=75.0)
    assert choice.min_score == pytest.approx(0.7) and choice.kept == 4 and choice.precision == 75.0
    assert choice.recall == 60.0  # 3 of the 5 gold relations (one was predicted None)
    assert threshold_for_precision(scores, predicted, gold, none_id=0, target=100.0).min_score == pytest.approx(0.9)
    assert threshold_for_precision(scores, predicted, torch.zeros(6, dtype=torch.long), none_id=0,
                                   target=50.0) is None


def test_tied_scores_are_kept_or_dropped_together():
    scores = torch.tensor([0.9, 0.8, 0.8])
    predicted = torch.tensor([1, 1, 1])
    gold = torch.tensor([1, 1, 0])
    choice = threshold_for_precision(scores, predicted, gold, none_id=0, target=60.0)
    assert choice.kept == 3 and choice.min_score == pytest.approx(0.8)  # never a threshold that splits a tie


def test_calibrate_command_writes_the_config(tiny_bert_dir, tmp_path):
    from mmib_cli.storage.format import write_bundle

    data = write_mnre(tmp_path / "re.txt", re_examples())
    args = [a if a != "10" else "2" for a in RE_ARGS]  # two epochs: a model, not a good one
    with one_torch_thread():
        train_cli("re", data, data, tmp_path / "re", *args, text_dir=tiny_bert_dir)
    write_bundle(tmp_path / "bundle", {"re": tmp_path / "re"})
    result = invoke("calibrate", "-m", tmp_path / "bundle", "--data", data, "--precision", "0", expect=0)
    report = json.loads(result.stdout)
    config = json.loads((tmp_path / "bundle" / "re" / "config.json").read_text())
    assert config["relation_temperature"] == report["relation_temperature"] > 0
    assert config["relation_min_score"] == report["relation_min_score"]
    assert report["pairs"] == 16 + 4  # the four couple pairs are symmetric: read backwards too
    assert report["nll_after"] <= report["nll_before"] + 1e-6
    invoke("calibrate", "-m", tmp_path / "bundle", "--data", data, "--no-reverse-pairs", expect=0)
