"""`select_pairs` on hostile posts (issue 25, point 6): its candidate count is computed, not enumerated, and the
nearest-first choice looks at a bounded number of pairs, so tens of thousands of entities cost seconds, not hours.
"""
from __future__ import annotations

import random

from mmib_cli.annotation import postprocess
from mmib_cli.annotation.postprocess import _TypeFilter, same_entity, select_pairs
from mmib_cli.model.configuration import RE_LABELS

NAMES = ["Ann", "ann", "@Bob", "Carl", "Acme", "acme", "Paris", ""]


def _enumerated(entities, type_constraints, max_pairs):
    """The selection as it was made before: every pair enumerated, nearest first."""
    types = _TypeFilter(RE_LABELS, type_constraints)
    order = sorted(range(len(entities)), key=lambda i: (entities[i]["start"], entities[i]["end"], i))
    chosen, candidates, full = [], 0, False
    for gap in range(1, len(order)):
        for pos in range(len(order) - gap):
            a, b = order[pos], order[pos + gap]
            if same_entity(entities[a], entities[b]):
                continue
            directions = [(h, t) for h, t in ((a, b), (b, a)) if types.admits(entities[h], entities[t])]
            candidates += len(directions)
            if not full and max_pairs and len(chosen) + len(directions) > max_pairs:
                full = True
            if not full:
                chosen.extend(directions)
    return sorted(chosen), candidates


def test_counted_candidates_and_chosen_pairs_match_full_enumeration():
    rng = random.Random(25)
    for _ in range(1500):
        entities = []
        for _ in range(rng.randint(0, 14)):
            start = rng.randint(0, 40)  # overlaps, repeated spans and same names are common
            entity = {"start": start, "end": start + rng.randint(1, 6), "text": rng.choice(NAMES)}
            if rng.random() < 0.85:
                entity["label"] = rng.choice(["PER", "ORG", "LOC", "MISC", "X"])
            entities.append(entity)
        type_constraints, max_pairs = rng.random() < 0.7, rng.choice([0, 1, 2, 3, 5, 10, 1000])
        got = select_pairs(entities, RE_LABELS, type_constraints=type_constraints, max_pairs=max_pairs)
        assert (got.pairs, got.candidates) == _enumerated(entities, type_constraints, max_pairs)


def test_fifty_thousand_entities_look_at_a_bounded_number_of_pairs(monkeypatch):
    looked = []
    real = postprocess.same_entity
    monkeypatch.setattr(postprocess, "same_entity", lambda a, b: looked.append(1) or real(a, b))
    same = [{"start": 0, "end": 5, "text": "Obama", "label": "PER"}] * 50_000  # every pair excluded
    assert select_pairs(same, RE_LABELS, max_pairs=1000).candidates == 0
    assert len(looked) == postprocess.PAIR_CHECKS
    looked.clear()
    distinct = [{"start": 6 * i, "end": 6 * i + 5, "text": f"w{i}", "label": "PER"} for i in range(50_000)]
    selection = select_pairs(distinct, RE_LABELS, max_pairs=1000)
    assert selection.candidates == 50_000 * 49_999 and len(selection.pairs) == 1000
    assert len(looked) <= 1001  # stops once the cap is full
