"""Relations that make sense on open text: no self/overlapping pairs, one direction for asymmetric relations,
consistent symmetric ones, calibration from the checkpoint, and bounded work per post (pair cap, scoring blocks)."""
from __future__ import annotations

import pytest

from mmib_cli.model.configuration import RE_LABELS, MMIBConfig
from mmib_cli.annotation.postprocess import (SYMMETRIC_RELATION_NAMES, calibrate, is_symmetric, relations_from_scores,
                                  select_pairs)

ASYMMETRIC = ["/per/per/parent", "/per/per/charges", "/org/org/subsidiary", "/loc/loc/contain", "/misc/misc/part_of"]
SYMMETRIC = ["/per/per/peer", "/per/per/couple", "/per/per/siblings", "/per/per/neighbor", "/per/per/alumi",
             "/per/per/alternate_names", "/org/org/alternate_names"]


def _entity(text: str, label: str, start: int) -> dict:
    return {"text": text, "label": label, "start": start, "end": start + len(text), "score": 0.9}


def _probs(by_label: dict[str, float]) -> list[float]:
    probs = [0.0] * len(RE_LABELS)
    for label, p in by_label.items():
        probs[RE_LABELS.index(label)] = p
    return probs


def _triples(relations):
    return [(r["head"]["text"], r["relation"], r["tail"]["text"], r["score"]) for r in relations]


def test_every_label_is_classified_as_the_issue_lists():
    assert all(is_symmetric(label) for label in SYMMETRIC)
    assert not any(is_symmetric(label) for label in ASYMMETRIC + ["/per/org/member_of", "/loc/loc/unknown"])
    assert SYMMETRIC_RELATION_NAMES == {"peer", "couple", "siblings", "neighbor", "alumi", "alternate_names"}


# -- never self, never overlapping ----------------------------------------------------------------------------------
def test_no_relation_to_itself_or_to_an_overlapping_span():
    entities = [_entity("Yale", "ORG", 0), _entity("Yale University", "ORG", 0), _entity("Yale", "ORG", 0),
                _entity("Harvard", "ORG", 20)]
    subsidiary = _probs({"/org/org/subsidiary": 1.0})
    pairs = [(0, 0), (0, 1), (1, 2), (2, 0)]
    assert relations_from_scores(entities, pairs, [subsidiary] * 4, keep_none=True) == []
    selection = select_pairs(entities, type_constraints=False)
    assert selection.pairs == [(0, 3), (1, 3), (2, 3), (3, 0), (3, 1), (3, 2)]  # only pairs with Harvard


def test_two_mentions_of_the_same_name_are_one_entity():
    entities = [_entity("Yale", "ORG", 0), _entity("Harvard", "ORG", 10), _entity("yale", "ORG", 30),
                _entity("#Yale", "ORG", 40)]
    subsidiary = _probs({"/org/org/subsidiary": 1.0})
    assert relations_from_scores(entities, [(0, 2), (2, 0), (0, 3)], [subsidiary] * 3, keep_none=True) == []
    assert {frozenset(p) for p in select_pairs(entities).pairs} == {frozenset((1, k)) for k in (0, 2, 3)}


# -- asymmetric relations: one direction ----------------------------------------------------------------------------
@pytest.mark.parametrize("label", ASYMMETRIC)
def test_asymmetric_relations_keep_only_the_higher_scoring_direction(label):
    head_type = {"per": "PER", "org": "ORG", "loc": "LOC", "misc": "MISC"}[label.split("/")[1]]
    a, b = _entity("Alpha", head_type, 0), _entity("Beta", head_type, 10)
    forward, backward = _probs({label: 0.7, "None": 0.3}), _probs({label: 0.9, "None": 0.1})
    relations = relations_from_scores([a, b], [(0, 1), (1, 0)], [forward, backward])
    assert _triples(relations) == [("Beta", label, "Alpha", 0.9)]
    with_none = relations_from_scores([a, b], [(0, 1), (1, 0)], [forward, backward], keep_none=True)
    assert _triples(with_none) == [("Alpha", "None", "Beta", 0.3), ("Beta", label, "Alpha", 0.9)]


def test_a_relation_in_one_direction_beats_none_in_the_other():
    a, b = _entity("Florida", "LOC", 0), _entity("Kennedy Space Center", "LOC", 12)
    relations = relations_from_scores([a, b], [(0, 1), (1, 0)],
                                      [_probs({"/loc/loc/contain": 0.6, "None": 0.4}), _probs({"None": 1.0})])
    assert _triples(relations) == [("Florida", "/loc/loc/contain", "Kennedy Space Center", 0.6)]


def test_one_relation_per_pair_even_across_labels():
    a, b = _entity("Ann", "PER", 0), _entity("Bob", "PER", 8)
    relations = relations_from_scores([a, b], [(0, 1), (1, 0)],
                                      [_probs({"/per/per/parent": 0.8, "None": 0.2}),
                                       _probs({"/per/per/charges": 0.6, "None": 0.4})])
    assert _triples(relations) == [("Ann", "/per/per/parent", "Bob", 0.8)]


# -- symmetric relations: both directions, same label and score -----------------------------------------------------
@pytest.mark.parametrize("label", SYMMETRIC)
def test_symmetric_relations_are_emitted_both_ways_with_one_label_and_score(label):
    kind = "PER" if label.startswith("/per") else "ORG"
    a, b = _entity("Alpha", kind, 0), _entity("Beta", kind, 10)
    other = "/per/per/parent" if kind == "PER" else "/org/org/subsidiary"
    relations = relations_from_scores([a, b], [(0, 1), (1, 0)],
                                      [_probs({label: 0.8, "None": 0.2}), _probs({other: 0.6, "None": 0.4})])
    assert _triples(relations) == [("Alpha", label, "Beta", 0.8), ("Beta", label, "Alpha", 0.8)]
    assert relations_from_scores([a, b], [(0, 1), (1, 0)],
                                 [_probs({label: 0.8, "None": 0.2}), _probs({other: 0.6, "None": 0.4})],
                                 min_score=0.85) == []  # both directions pass or fail the threshold together


# -- calibration -------------------------------------------------------------------------------------------------------
def test_calibration_temperature_flattens_scores_and_keeps_the_label():
    assert calibrate([0.9, 0.1], 1.0) == [0.9, 0.1]
    flat = calibrate([0.9, 0.1], 2.0)
    assert flat[0] == pytest.approx(3 / 4) and flat[1] == pytest.approx(1 / 4)  # sqrt(0.9):sqrt(0.1) = 3:1
    assert calibrate([1.0, 0.0], 3.0) == [1.0, 0.0]
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            calibrate([0.5, 0.5], bad)
    a, b = _entity("Ann", "PER", 0), _entity("Acme", "ORG", 8)
    probs = [_probs({"/per/org/member_of": 0.9, "None": 0.1})]
    plain = relations_from_scores([a, b], [(0, 1)], probs)
    hot = relations_from_scores([a, b], [(0, 1)], probs, temperature=2.0)
    assert plain[0]["relation"] == hot[0]["relation"] == "/per/org/member_of"
    assert (plain[0]["score"], hot[0]["score"]) == (0.9, 0.75)


def test_config_validates_the_relation_decoding_fields():
    config = MMIBConfig(task="re", relation_temperature=1.7, relation_min_score=0.4)
    again = MMIBConfig.from_dict(config.to_dict())
    assert (again.relation_temperature, again.relation_min_score) == (1.7, 0.4)
    assert (MMIBConfig(task="re").relation_temperature, MMIBConfig(task="re").relation_min_score) == (1.0, None)
    for bad in (0, -1.0, float("nan"), 1e9, "2", True):
        with pytest.raises(ValueError, match="relation_temperature"):
            MMIBConfig(task="re", relation_temperature=bad)
    for bad in (-0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="relation_min_score"):
            MMIBConfig(task="re", relation_min_score=bad)


# -- bounded work per post ---------------------------------------------------------------------------------------------
def _many(n: int, label: str = "PER") -> list[dict]:
    return [_entity(f"w{i}", label, 6 * i) for i in range(n)]


def test_pair_cap_takes_the_nearest_pairs_in_a_fixed_order():
    entities = _many(300)
    first = select_pairs(entities, max_pairs=1000)
    assert first.candidates == 300 * 299 and len(first.pairs) == 1000 and first.capped
    assert first == select_pairs(list(entities), max_pairs=1000)  # reproducible
    assert max(abs(i - j) for i, j in first.pairs) <= 2  # neighbours (gap 1: 598 pairs), then gap 2
    assert all((j, i) in set(first.pairs) for i, j in first.pairs)  # both directions of every pair
    shuffled = entities[::-1]  # order of the input list does not change which spans are paired
    spans = {(e["start"], f["start"]) for e, f in ((entities[i], entities[j]) for i, j in first.pairs)}
    assert spans == {(e["start"], f["start"]) for e, f in ((shuffled[i], shuffled[j])
                                                           for i, j in select_pairs(shuffled, max_pairs=1000).pairs)}
    assert not select_pairs(_many(30), max_pairs=1000).capped
    assert len(select_pairs(entities, max_pairs=0).pairs) == 300 * 299  # 0: no cap


@pytest.fixture(scope="module")
def annotator(tiny_bundle):
    from mmib_cli import Annotator

    return Annotator.from_pretrained(str(tiny_bundle), device="cpu")


def test_a_post_with_hundreds_of_entities_scores_a_bounded_number_of_pairs_in_blocks(annotator, monkeypatch):
    from mmib_cli.annotation import forward as inference
    from mmib_cli.annotation.annotator import RelationSettings

    calls: list[int] = []
    real = inference.WindowRunner._call

    def counting(self, entries, length):
        if self.task == "re":
            calls.append(len(entries))
        return real(self, entries, length)

    monkeypatch.setattr(inference.WindowRunner, "_call", counting)
    words = [f"w{i}" for i in range(300)]
    text = " ".join(words)
    starts = [sum(len(w) + 1 for w in words[:i]) for i in range(len(words))]
    entities = [{"text": w, "label": "PER", "start": s, "end": s + len(w)} for w, s in zip(words, starts)]
    assert all(text[e["start"]:e["end"]] == e["text"] for e in entities)
    settings = RelationSettings(pair=True, keep_none=True, min_score=0.0)
    record = next(annotator.relations([{"id": "big", "text": text, "entities": entities}], relation_settings=settings))
    assert record["relations_capped"] == {"pairs": 300 * 299, "scored": 1000}
    rows = max(inference.rows_per_call(annotator.device, n) for n in inference.LENGTH_BUCKETS)
    assert sum(calls) == 1000 and max(calls) <= rows  # calls of a fixed row count, never all pairs at once
    assert len(record["relations"]) == 1000  # keep_none: one record per scored pair, none self or overlapping
    assert all(r["head"]["start"] != r["tail"]["start"] for r in record["relations"])


def test_checkpoint_sets_the_default_min_score_and_temperature(annotator, monkeypatch):
    from mmib_cli.annotation.annotator import RelationSettings

    post = {"text": "Ann met Bob and Carl at Acme",
            "entities": [{"start": 0, "end": 3, "label": "PER"}, {"start": 8, "end": 11, "label": "PER"},
                         {"start": 16, "end": 20, "label": "PER"}, {"start": 24, "end": 28, "label": "ORG"}]}

    def run(**settings):
        return next(annotator.relations([post], relation_settings=RelationSettings(pair=True, **settings)))["relations"]

    config = annotator.re.model.config
    base = run()
    assert base and "relations_capped" not in base
    monkeypatch.setattr(config, "relation_min_score", 1.0)
    assert run() == [r for r in base if r["score"] >= 1.0]  # the checkpoint's threshold is the default
    assert run(min_score=0.0) == base  # an explicit --min-score wins
    monkeypatch.setattr(config, "relation_min_score", None)
    monkeypatch.setattr(config, "relation_temperature", 50.0)
    hot = run()
    assert [(r["head"]["start"], r["tail"]["start"], r["relation"]) for r in hot] == \
        [(r["head"]["start"], r["tail"]["start"], r["relation"]) for r in base]
    assert all(h["score"] <= b["score"] for h, b in zip(hot, base)) and hot != base


def test_given_pairs_never_relate_an_entity_to_itself(annotator):
    post = {"text": "Obama met Biden", "pairs": [
        {"head": {"start": 0, "end": 5, "label": "PER"}, "tail": {"start": 0, "end": 5, "label": "PER"}},
        {"head": {"start": 0, "end": 5, "label": "PER"}, "tail": {"start": 10, "end": 15, "label": "PER"}}]}
    from mmib_cli.annotation.annotator import RelationSettings

    record = next(annotator.relations([post], relation_settings=RelationSettings(pair=False, keep_none=True)))
    assert [(r["head"]["start"], r["tail"]["start"]) for r in record["relations"]] == [(0, 10)]


def test_cli_max_pairs_caps_and_says_so(tiny_bundle, tmp_path, check):
    from cli_helpers import invoke, read_out, write_jsonl

    post = {"id": "p", "text": "Ann met Bob and Carl at Acme",
            "entities": [_entity("Ann", "PER", 0), _entity("Bob", "PER", 8), _entity("Carl", "PER", 16),
                         _entity("Acme", "ORG", 24)]}
    src = write_jsonl(tmp_path / "in.jsonl", [post])
    result = invoke("relations", src, "-o", tmp_path / "out.jsonl", "-m", tiny_bundle, "--pair", "--keep-none",
                    "--max-pairs", "4", "--num-workers", "0")
    assert result.exit_code == 0, result.output
    [record] = read_out(tmp_path / "out.jsonl", check)  # the schema knows `relations_capped`
    # PER-PER pairs go both ways (3 pairs, 6 directions), PER->ORG one way (3): 9 candidates; the 2 nearest pairs
    # (Ann-Bob, Bob-Carl: 4 directions) fit in 4
    assert record["relations_capped"] == {"pairs": 9, "scored": 4}
    assert {(r["head"]["start"], r["tail"]["start"]) for r in record["relations"]} == {(0, 8), (8, 0), (8, 16), (16, 8)}
