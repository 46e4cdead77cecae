"""Calibration of relation scores on a labelled split: a temperature, and a score threshold for a precision target.

Scores are the probability of the predicted relation after temperature scaling, `softmax(log(p) / T)` (the same
as `softmax(logits / T)`; `T` never changes which label wins). `T` is fitted by minimising the negative
log-likelihood of the gold labels; the threshold is the lowest score at which the relations predicted at or above
it (`None` excluded) reach the precision target on the same split, so `--min-score` reads as a precision.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmib_cli.errors import UsageError

TEMPERATURE_RANGE = (0.05, 20.0)  # searched on a log scale
PROB_FLOOR = 1e-12  # log(0) guard for probabilities that underflowed


@dataclass(frozen=True)
class ThresholdChoice:
    """A score threshold and what it gives on the split it was picked on (percentages)."""

    min_score: float
    precision: float
    recall: float
    kept: int


def scaled_probabilities(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """`softmax(log(p) / T)` row by row for probabilities `(N, labels)`."""
    return torch.softmax(probs.clamp_min(PROB_FLOOR).log() / temperature, dim=-1)


def fit_temperature(probs: torch.Tensor, gold: torch.Tensor, *, steps: int = 60) -> float:
    """The temperature that minimises the NLL of `gold` (label ids `(N,)`) under `scaled_probabilities`.

    A golden-section search on log T over `TEMPERATURE_RANGE` (the NLL is unimodal in log T); deterministic.

    Raises:
        ValueError: no examples, or shapes that do not match.
    """
    if probs.dim() != 2 or gold.shape != (probs.shape[0],) or probs.shape[0] == 0:
        raise ValueError(f"need probabilities (N, labels) and gold ids (N,), got {tuple(probs.shape)} and "
                         f"{tuple(gold.shape)}")
    logs = probs.double().clamp_min(PROB_FLOOR).log()

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logs / math.exp(log_t), gold))

    lo, hi = (math.log(t) for t in TEMPERATURE_RANGE)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(steps):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return round(math.exp((lo + hi) / 2), 4)


def threshold_for_precision(scores: torch.Tensor, predicted: torch.Tensor, gold: torch.Tensor, *,
                            none_id: int, target: float) -> ThresholdChoice | None:
    """The lowest score threshold whose kept relations reach `target` precision (in %), None when none does.

    Args:
        scores: score of each example's predicted label `(N,)`.
        predicted: predicted label ids `(N,)`; predictions of `none_id` are never kept.
        gold: gold label ids `(N,)`.
        none_id: id of the `None` label.
        target: precision to reach, in percent (e.g. 80.0).

    Returns:
        The threshold (the score of the last kept relation) with the precision, recall (of the non-None gold
        relations) and number kept at it.
    """
    relations = predicted != none_id
    order = torch.argsort(scores[relations], descending=True, stable=True)
    ranked_scores = scores[relations][order]
    hits = (predicted[relations] == gold[relations])[order].double().cumsum(0)
    kept = torch.arange(1, len(order) + 1, dtype=torch.double)
    precision = 100.0 * hits / kept
    gold_relations = int((gold != none_id).sum())
    best = None
    for i in range(len(order)):
        last_of_tie = i + 1 == len(order) or ranked_scores[i + 1] < ranked_scores[i]
        if last_of_tie and precision[i] >= target:
            best = i
    if best is None:
        return None
    return ThresholdChoice(min_score=float(ranked_scores[best]), precision=round(float(precision[best]), 2),
                           recall=round(100.0 * float(hits[best]) / max(1, gold_relations), 2), kept=best + 1)


def calibrate_checkpoint(directory: str | Path, data: Sequence[str | Path], *, precision: float,
                         reverse_pairs: bool = True) -> dict[str, Any]:
    """Fit `relation_temperature` and `relation_min_score` of an RE checkpoint on labelled MNRE files.

    Args:
        directory: an RE checkpoint directory, or a bundle directory (its `re/` part is calibrated).
        data: MNRE files, e.g. the valid split (never the test split).
        precision: the precision target (%) that picks `relation_min_score`.
        reverse_pairs: also score every annotated pair read backwards (`mnre.reversed_pairs`), as the pair
            enumeration of `annotate --relations` produces both directions.

    Returns:
        `{"relation_temperature", "relation_min_score", "precision", "recall", "kept", "pairs", "nll_before",
        "nll_after"}`; the two config values are written into the checkpoint's config.json (`relation_min_score`
        is null when no threshold reaches the target).
    """
    from mmib_cli.checkpoint.assemble import load_model
    from mmib_cli.storage.format import read_bundle, update_config
    from mmib_cli.data.datasets import read_examples
    from mmib_cli.annotation.forward import predict_re

    directory = Path(directory)
    bundle = read_bundle(directory)
    if bundle is not None:
        if "re" not in bundle:
            raise UsageError(f"{directory}: the bundle has no re part")
        directory = bundle["re"]
    loaded = load_model(directory)
    labels = loaded.model.config.labels
    if loaded.model.config.task != "re":
        raise UsageError(f"{directory} is a {loaded.model.config.task} checkpoint, not re")
    examples = read_examples("re", list(data), loaded.featurizer, labels, reverse_pairs=reverse_pairs)
    probs = predict_re(loaded, examples.windows)
    gold = torch.tensor([labels.index(g) for g in examples.gold])
    temperature = fit_temperature(probs, gold)
    scaled = scaled_probabilities(probs, temperature)
    scores, predicted = scaled.max(dim=-1)
    choice = threshold_for_precision(scores, predicted, gold, none_id=labels.index("None"), target=precision)
    min_score = round(choice.min_score, 4) if choice else None
    update_config(directory, {"relation_temperature": temperature, "relation_min_score": min_score})
    return {"relation_temperature": temperature, "relation_min_score": min_score, "target_precision": precision,
            "precision": choice.precision if choice else None, "recall": choice.recall if choice else None,
            "kept": choice.kept if choice else 0, "pairs": len(gold),
            "nll_before": round(float(torch.nn.functional.nll_loss(probs.clamp_min(PROB_FLOOR).log(), gold)), 4),
            "nll_after": round(float(torch.nn.functional.nll_loss(scaled.clamp_min(PROB_FLOOR).log(), gold)), 4)}
