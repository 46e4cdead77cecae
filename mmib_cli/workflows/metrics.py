"""Evaluation metrics for MNER (entity-level, seqeval/conlleval convention) and MRE (MMIB/HVPNeT convention).

Pure Python: no torch. Every score is a percentage (×100) rounded to 2 decimals; a ratio with a zero denominator
is 0.0. seqeval (the `eval` extra) is imported lazily, only by `ner_scores`.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

__all__ = ["ner_scores", "re_scores"]


def _pct(numerator: int, denominator: int) -> float:
    """`100 * numerator / denominator` rounded to 2 decimals; 0.0 when the denominator is 0."""
    return round(100.0 * numerator / denominator, 2) if denominator else 0.0


def _prf(correct: int, predicted: int, gold: int) -> dict[str, float]:
    """Precision, recall and F1 (×100) from counts; F1 = 2·correct / (predicted + gold), unrounded inputs."""
    return {
        "precision": _pct(correct, predicted),
        "recall": _pct(correct, gold),
        "f1": _pct(2 * correct, predicted + gold),
    }


def _get_entities():
    """seqeval's chunk extractor, imported lazily with an install hint when the extra is missing."""
    try:
        from seqeval.metrics.sequence_labeling import get_entities
    except ImportError as exc:
        raise ImportError(
            "NER scores need the seqeval package, which is not installed: pip install 'mmib[eval]'"
        ) from exc
    return get_entities


def _check_lengths(gold: Sequence, pred: Sequence, what: str) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{what}: {len(gold)} gold vs {len(pred)} predicted items")


def ner_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """Entity-level micro precision/recall/F1 and per-type scores of BIO tag sequences.

    Entities are seqeval's default-mode chunks (the conlleval convention, as MMIB reports): an `I-X` that does not
    continue an `X` entity starts a new one. An entity counts as correct only when type, start and end all match.

    Args:
        gold: gold tags, one list per sentence.
        pred: predicted tags, one list per sentence, each as long as its gold list.

    Returns:
        `{"precision", "recall", "f1", "support", "predicted", "correct", "per_type": {TYPE: {"precision",
        "recall", "f1", "support", "predicted", "correct"}}}`; scores ×100 with 2 decimals, `support` = gold
        entities. `per_type` lists every type seen in gold or pred, sorted by name.

    Raises:
        ValueError: the number of sentences, or the length of a sentence, differs between gold and pred.
        ImportError: seqeval is not installed (`pip install 'mmib[eval]'`).
    """
    _check_lengths(gold, pred, "ner_scores")
    get_entities = _get_entities()
    gold_counts: Counter[str] = Counter()
    pred_counts: Counter[str] = Counter()
    correct_counts: Counter[str] = Counter()
    for i, (gold_tags, pred_tags) in enumerate(zip(gold, pred)):
        if len(gold_tags) != len(pred_tags):
            raise ValueError(
                f"ner_scores: sentence {i} has {len(gold_tags)} gold vs {len(pred_tags)} predicted tags"
            )
        gold_entities = set(get_entities(list(gold_tags)))
        pred_entities = set(get_entities(list(pred_tags)))
        gold_counts.update(kind for kind, _, _ in gold_entities)
        pred_counts.update(kind for kind, _, _ in pred_entities)
        correct_counts.update(kind for kind, _, _ in gold_entities & pred_entities)
    per_type = {
        kind: {
            **_prf(correct_counts[kind], pred_counts[kind], gold_counts[kind]),
            "support": gold_counts[kind],
            "predicted": pred_counts[kind],
            "correct": correct_counts[kind],
        }
        for kind in sorted(set(gold_counts) | set(pred_counts))
    }
    n_gold, n_pred, n_correct = sum(gold_counts.values()), sum(pred_counts.values()), sum(correct_counts.values())
    return {
        **_prf(n_correct, n_pred, n_gold),
        "support": n_gold,
        "predicted": n_pred,
        "correct": n_correct,
        "per_type": per_type,
    }


def re_scores(gold: Sequence[str], pred: Sequence[str], none_label: str = "None") -> dict:
    """Accuracy and micro precision/recall/F1 over non-`None` relations (MMIB's `eval_result` convention).

    P = correct non-None / predicted non-None; R = correct non-None / gold non-None; accuracy counts every
    instance, `None` included.

    Args:
        gold: gold relation label per instance.
        pred: predicted relation label per instance.
        none_label: the "no relation" label left out of P/R/F1.

    Returns:
        `{"accuracy", "precision", "recall", "f1", "total", "correct", "gold_positive", "pred_positive",
        "correct_positive", "per_relation": {LABEL: {"gold", "predicted", "correct", "precision", "recall",
        "f1"}}}`; scores ×100 with 2 decimals. `per_relation` lists every label seen (`None` included), sorted.

    Raises:
        ValueError: gold and pred differ in length.
    """
    _check_lengths(gold, pred, "re_scores")
    gold_counts: Counter[str] = Counter(gold)
    pred_counts: Counter[str] = Counter(pred)
    correct_counts: Counter[str] = Counter(g for g, p in zip(gold, pred) if g == p)
    total = len(gold)
    correct = sum(correct_counts.values())
    gold_positive = total - gold_counts[none_label]
    pred_positive = total - pred_counts[none_label]
    correct_positive = correct - correct_counts[none_label]
    per_relation = {
        label: {
            "gold": gold_counts[label],
            "predicted": pred_counts[label],
            "correct": correct_counts[label],
            **_prf(correct_counts[label], pred_counts[label], gold_counts[label]),
        }
        for label in sorted(set(gold_counts) | set(pred_counts))
    }
    return {
        "accuracy": _pct(correct, total),
        **_prf(correct_positive, pred_positive, gold_positive),
        "total": total,
        "correct": correct,
        "gold_positive": gold_positive,
        "pred_positive": pred_positive,
        "correct_positive": correct_positive,
        "per_relation": per_relation,
    }
