"""Tests of mmib_cli.workflows.metrics on hand-computed examples (and against seqeval itself)."""
from __future__ import annotations

import random
import subprocess
import sys

import pytest

from mmib_cli.workflows.metrics import ner_scores, re_scores

# ------------------------------------------------------------------------------------------------ NER

GOLD = [
    ["B-PER", "I-PER", "O", "B-LOC"],  # PER(0-1), LOC(3)
    ["B-ORG", "O", "B-MISC", "I-MISC"],  # ORG(0), MISC(2-3)
]
PRED = [
    ["B-PER", "I-PER", "O", "B-ORG"],  # PER(0-1) correct, ORG(3) wrong type
    ["B-ORG", "O", "B-MISC", "O"],  # ORG(0) correct, MISC(2) wrong boundary
]


def test_ner_scores_hand_computed():
    scores = ner_scores(GOLD, PRED)
    # gold 4 entities, predicted 4, correct 2
    assert (scores["support"], scores["predicted"], scores["correct"]) == (4, 4, 2)
    assert (scores["precision"], scores["recall"], scores["f1"]) == (50.0, 50.0, 50.0)
    assert scores["per_type"] == {
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "predicted": 0, "correct": 0},
        "MISC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "predicted": 1, "correct": 0},
        # ORG: 1 correct of 2 predicted, 1 gold -> P 50, R 100, F1 2*1/(2+1) = 66.67
        "ORG": {"precision": 50.0, "recall": 100.0, "f1": 66.67, "support": 1, "predicted": 2, "correct": 1},
        "PER": {"precision": 100.0, "recall": 100.0, "f1": 100.0, "support": 1, "predicted": 1, "correct": 1},
    }


def test_ner_scores_precision_differs_from_recall():
    pred = [PRED[0], ["B-ORG", "O", "O", "O"]]  # 3 predicted, 2 correct; 4 gold
    scores = ner_scores(GOLD, pred)
    assert (scores["precision"], scores["recall"], scores["f1"]) == (66.67, 50.0, 57.14)  # F1 = 4/7


def test_ner_scores_conlleval_reading_of_stray_i_tags():
    # default (non-strict) seqeval mode: an I- without B- starts an entity, so these two match
    gold = [["O", "I-LOC", "I-LOC", "O"]]
    pred = [["O", "B-LOC", "I-LOC", "O"]]
    assert ner_scores(gold, pred)["f1"] == 100.0
    # an I- of another type ends the entity and starts a new one
    scores = ner_scores([["B-ORG", "I-ORG", "I-PER"]], [["B-ORG", "I-ORG", "B-PER"]])
    assert (scores["support"], scores["correct"], scores["f1"]) == (2, 2, 100.0)


def test_ner_scores_perfect_and_empty():
    assert ner_scores(GOLD, GOLD)["f1"] == 100.0
    empty = ner_scores([["O", "O"]], [["O", "O"]])
    assert (empty["precision"], empty["recall"], empty["f1"], empty["support"]) == (0.0, 0.0, 0.0, 0)
    assert empty["per_type"] == {}
    assert ner_scores([], [])["f1"] == 0.0


def test_ner_scores_rounds_to_two_decimals():
    gold = [["B-PER", "O", "B-PER", "O", "B-PER"]]
    pred = [["B-PER", "O", "O", "O", "O"]]
    scores = ner_scores(gold, pred)
    assert (scores["precision"], scores["recall"], scores["f1"]) == (100.0, 33.33, 50.0)


def test_ner_scores_length_mismatch():
    with pytest.raises(ValueError, match="2 gold vs 1 predicted"):
        ner_scores(GOLD, PRED[:1])
    with pytest.raises(ValueError, match="sentence 1 has 4 gold vs 3 predicted tags"):
        ner_scores(GOLD, [PRED[0], PRED[1][:3]])


def test_ner_scores_agree_with_seqeval():
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    rng = random.Random(0)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
    gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(200)]
    pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in sentence] for sentence in gold]
    scores = ner_scores(gold, pred)
    assert scores["precision"] == round(100 * precision_score(gold, pred), 2)
    assert scores["recall"] == round(100 * recall_score(gold, pred), 2)
    assert scores["f1"] == round(100 * f1_score(gold, pred), 2)
    report = classification_report(gold, pred, output_dict=True)
    for kind, row in scores["per_type"].items():
        assert row["support"] == report[kind]["support"]
        assert row["f1"] == round(100 * report[kind]["f1-score"], 2)


def test_missing_seqeval_gives_install_hint(monkeypatch):
    for name in ("seqeval", "seqeval.metrics", "seqeval.metrics.sequence_labeling"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'mmib\[eval\]'"):
        ner_scores(GOLD, PRED)
    # RE scores never need seqeval
    assert re_scores(["None"], ["None"])["accuracy"] == 100.0


def test_metrics_module_imports_neither_torch_nor_seqeval():
    code = "import sys, mmib_cli.workflows.metrics; assert 'torch' not in sys.modules; assert 'seqeval' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------ RE

RE_GOLD = ["None", "A", "A", "B", "None", "B", "None"]
RE_PRED = ["None", "A", "B", "B", "None", "None", "None"]


def test_re_scores_hand_computed():
    scores = re_scores(RE_GOLD, RE_PRED)
    # correct: idx 0, 1, 3, 4, 6 -> 5/7 = 71.43
    assert (scores["total"], scores["correct"], scores["accuracy"]) == (7, 5, 71.43)
    # non-None: predicted A, B, B (3); gold A, A, B, B (4); correct A(1), B(3) -> 2
    assert (scores["pred_positive"], scores["gold_positive"], scores["correct_positive"]) == (3, 4, 2)
    assert (scores["precision"], scores["recall"], scores["f1"]) == (66.67, 50.0, 57.14)
    assert scores["per_relation"] == {
        "A": {"gold": 2, "predicted": 1, "correct": 1, "precision": 100.0, "recall": 50.0, "f1": 66.67},
        "B": {"gold": 2, "predicted": 2, "correct": 1, "precision": 50.0, "recall": 50.0, "f1": 50.0},
        # None: gold at 0, 4, 6 (all predicted None), plus one wrong None at 5 -> 3 of 4 predicted
        "None": {"gold": 3, "predicted": 4, "correct": 3, "precision": 75.0, "recall": 100.0, "f1": 85.71},
    }


def test_re_scores_none_is_not_a_positive():
    # predicting None everywhere: accuracy = None share, P/R/F1 = 0 (no positive predictions)
    scores = re_scores(RE_GOLD, ["None"] * len(RE_GOLD))
    assert scores["accuracy"] == 42.86
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.0, 0.0, 0.0)
    # a wrong non-None prediction on a None gold lowers precision only
    scores = re_scores(["None", "A"], ["B", "A"])
    assert (scores["precision"], scores["recall"], scores["f1"], scores["accuracy"]) == (50.0, 100.0, 66.67, 50.0)


def test_re_scores_custom_none_label():
    scores = re_scores(["NA", "x", "y"], ["NA", "x", "NA"], none_label="NA")
    assert (scores["gold_positive"], scores["pred_positive"], scores["correct_positive"]) == (2, 1, 1)
    assert (scores["precision"], scores["recall"]) == (100.0, 50.0)
    # with the default label, "NA" is an ordinary relation
    assert re_scores(["NA"], ["NA"])["precision"] == 100.0


def test_re_scores_empty_and_mismatch():
    empty = re_scores([], [])
    assert (empty["accuracy"], empty["f1"], empty["total"], empty["per_relation"]) == (0.0, 0.0, 0, {})
    with pytest.raises(ValueError, match="3 gold vs 2 predicted"):
        re_scores(["a", "b", "c"], ["a", "b"])
