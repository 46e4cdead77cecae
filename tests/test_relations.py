"""`mmib relations` and `annotate --relations`: pairs, given spans, type constraints, scores."""
from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import invoke, make_posts, read_out, write_jsonl


# -- relations -------------------------------------------------------------------------------------------------------
PAIR_POSTS = make_posts(12, seed=11)


@pytest.fixture(scope="module")
def pair_input(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "in.jsonl", PAIR_POSTS)


def _run_relations(tiny_bundle, src: Path, out: Path, *extra: str, check) -> list[dict]:
    invoke("relations", src, "-o", out, "-m", tiny_bundle, "--num-workers", "0", *extra, expect=0)
    return read_out(out, check)


ALL_PAIRS = ("--pair", "--keep-none", "--no-type-constraints")


@pytest.fixture(scope="module")
def all_pairs(tiny_bundle, pair_input, tmp_path_factory, check) -> list[dict]:
    """`relations --pair --keep-none --no-type-constraints`: every ordered pair of found entities, scored."""
    return _run_relations(tiny_bundle, pair_input, tmp_path_factory.mktemp("all-pairs") / "o.jsonl", *ALL_PAIRS,
                          check=check)


def test_relations_pair_every_ordered_pair_with_keep_none(all_pairs):
    from mmib_cli.annotation.postprocess import same_entity

    records = all_pairs
    assert sum(len(r["entities"]) for r in records) > 0  # the random NER does find entities
    for rec in records:
        ents = rec["entities"]
        # every ordered pair except two mentions of the same name (one entity, never related to itself)
        assert len(rec["relations"]) == sum(not same_entity(a, b) for a in ents for b in ents)
        pairs = [(r["head"]["start"], r["tail"]["start"]) for r in rec["relations"]]
        assert len(set(pairs)) == len(pairs)
        spans = {(e["start"], e["end"]) for e in rec["entities"]}
        for rel in rec["relations"]:
            assert (rel["head"]["start"], rel["head"]["end"]) in spans
            assert (rel["tail"]["start"], rel["tail"]["end"]) in spans


def test_relations_type_constraints_and_none(tiny_bundle, pair_input, tmp_path, check):
    from mmib_cli.annotation.postprocess import RELATION_SIGNATURES

    records = _run_relations(tiny_bundle, pair_input, tmp_path / "a.jsonl", "--pair", "--keep-none", check=check)
    assert sum(len(r["relations"]) for r in records) > 0
    for rec in records:
        for rel in rec["relations"]:
            if rel["relation"] != "None":
                assert RELATION_SIGNATURES[rel["relation"]] == (rel["head"]["label"], rel["tail"]["label"])
    default = _run_relations(tiny_bundle, pair_input, tmp_path / "b.jsonl", "--pair", check=check)
    kept = [rel for rec in records for rel in rec["relations"] if rel["relation"] != "None"]
    assert [rel for rec in default for rel in rec["relations"]] == kept  # without --keep-none: None pairs dropped


def test_relations_min_score(all_pairs, tiny_bundle, pair_input, tmp_path, check):
    every = [rel for rec in all_pairs for rel in rec["relations"]]
    threshold = sorted(rel["score"] for rel in every)[len(every) // 2]
    scored = _run_relations(tiny_bundle, pair_input, tmp_path / "b.jsonl", *ALL_PAIRS, "--min-score",
                            str(threshold), check=check)
    assert [rel for rec in scored for rel in rec["relations"]] == [r for r in every if r["score"] >= threshold]
    assert 0 < sum(len(r["relations"]) for r in scored) < len(every)


def test_relations_of_given_pairs_and_mnre_spans(tiny_bundle, tmp_path, check):
    rows = [
        {"id": "pairs", "text": "Obama met Biden in Washington",
         "pairs": [{"head": {"start": 0, "end": 5, "label": "PER"}, "tail": {"start": 10, "end": 15, "label": "PER"}},
                   {"head": {"start": 0, "end": 5}, "tail": {"start": 19, "end": 29}}]},
        {"id": "mnre", "text": "Kawhi Leonard plays for the Raptors",
         "tokens": ["Kawhi", "Leonard", "plays", "for", "the", "Raptors"],
         "h": {"name": "Kawhi Leonard", "pos": [0, 2]}, "t": {"name": "Raptors", "pos": [5, 6]},
         "img_id": "twitter_19_31_1_1.jpg"},
        {"id": "outside", "text": "short",
         "pairs": [{"head": {"start": 0, "end": 5}, "tail": {"start": 3, "end": 99}}]},
        {"id": "bad-pos", "text": "Obama met Biden", "tokens": ["Obama", "met", "Biden"],
         "h": {"pos": ["a", 1]}, "t": {"pos": [2, 3]}},
        {"id": "bad-pair", "text": "Obama met Biden", "pairs": ["not a pair"]},
        {"id": "none", "text": "no pairs given"},
        {"id": "entities-only", "text": "Obama met Biden", "entities": [{"start": 0, "end": 5, "label": "PER"}]},
        {"id": "empty-pairs", "text": "no pairs asked for", "pairs": []},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = invoke("relations", src, "-o", tmp_path / "o.jsonl", "-m", tiny_bundle, "--num-workers", "0",
                    "--keep-none")
    assert result.exit_code == 3, result.output
    pairs, mnre, outside, bad_pos, bad_pair, none, entities_only, empty = read_out(tmp_path / "o.jsonl", check)
    assert [(r["head"]["text"], r["tail"]["text"]) for r in pairs["relations"]] == [("Obama", "Biden"),
                                                                                   ("Obama", "Washington")]
    first = pairs["relations"][0]
    assert first["head"]["label"] == "PER" and first["tail"]["label"] == "PER"
    assert first["relation"] == "None" or first["relation"].startswith("/per/per/")
    [rel] = mnre["relations"]
    assert (rel["head"]["text"], rel["head"]["start"], rel["head"]["end"]) == ("Kawhi Leonard", 0, 13)
    assert (rel["tail"]["text"], rel["tail"]["start"], rel["tail"]["end"]) == ("Raptors", 28, 35)
    assert mnre["img_id"] == "twitter_19_31_1_1.jpg"  # other input fields pass through
    for rec in (outside, bad_pos, bad_pair):
        assert rec["error"]["type"] == "InvalidInput"
    # nothing to classify without --pair: said per line, not silently an empty list
    for rec in (none, entities_only):
        assert rec["error"]["type"] == "InvalidInput" and "--pair" in rec["error"]["message"]
    assert empty["relations"] == []  # an explicit empty list of pairs is a valid question


def test_relations_pair_uses_given_entities(tiny_bundle, tmp_path, check):
    text = "Obama met Merkel in Berlin"
    ents = [{"text": "Obama", "label": "PER", "start": 0, "end": 5, "score": 0.9},
            {"text": "Merkel", "label": "PER", "start": 10, "end": 16, "score": 0.8},
            {"text": "Berlin", "label": "LOC", "start": 20, "end": 26, "score": 0.7}]
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": text, "entities": ents}])
    [rec] = _run_relations(tiny_bundle, src, tmp_path / "o.jsonl", "--pair", "--keep-none", check=check)
    assert rec["entities"] == ents
    heads_tails = {(r["head"]["text"], r["tail"]["text"]) for r in rec["relations"]}
    # type constraints: LOC -> PER admits no relation, the other ordered pairs do
    assert heads_tails == {("Obama", "Merkel"), ("Obama", "Berlin"), ("Merkel", "Obama"), ("Merkel", "Berlin")}
    assert rec["relations"][0]["head"]["score"] == 0.9


MERKEL = {"start": 10, "end": 16, "label": "PER"}


@pytest.mark.parametrize(("entities", "message"), [
    ("Obama", '"entities" must be a list'),
    ({"start": 0, "end": 5}, '"entities" must be a list'),
    ([{"start": 2.5, "end": 5, "label": "PER"}, MERKEL], "whole-number start/end"),
    ([{"start": True, "end": 5, "label": "PER"}, MERKEL], "whole-number start/end"),
    ([{"start": "0", "end": 5, "label": "PER"}, MERKEL], "whole-number start/end"),
    ([{"start": 0, "end": 99, "label": "PER"}, MERKEL], "outside the text"),
    ([{"start": 0, "end": 5, "label": "PERSON"}, MERKEL], "labelled 'PERSON', not one of the types"),
    (["Obama", MERKEL], "entities must be objects"),
    ([{"start": 0, "end": 5}, MERKEL], 'needs a "label"'),
])
def test_relations_pair_refuses_malformed_given_entities(tiny_bundle, tmp_path, check, entities, message):
    """Given entities that are not a list, offsets that are not whole numbers, or labels no relation is defined
    over would be truncated or silently give no relations: each is an InvalidInput record naming its line."""
    rows = [{"id": "bad", "text": "Obama met Merkel", "entities": entities},
            {"id": "good", "text": "Obama met Merkel", "entities": [{"start": 0, "end": 5, "label": "PER"}, MERKEL]}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    result = invoke("relations", src, "-o", tmp_path / "o.jsonl", "-m", tiny_bundle, "--num-workers", "0", "--pair",
                    "--keep-none", expect=3)
    bad, good = read_out(tmp_path / "o.jsonl", check)
    assert bad["error"]["type"] == "InvalidInput" and message in bad["error"]["message"], result.output
    assert bad["error"]["message"].startswith("line 1: ")
    assert [(r["head"]["text"], r["tail"]["text"]) for r in good["relations"]] == [("Obama", "Merkel"),
                                                                                 ("Merkel", "Obama")]


def test_relations_pair_given_entity_forms_that_are_accepted(tiny_bundle, tmp_path, check):
    """Whole-number floats are offsets; any label goes without type constraints; `"entities": null` means none were
    given, so NER finds them (as for a post without the field)."""
    rows = [{"id": 1, "text": "Obama met Merkel", "entities": [{"start": 0.0, "end": 5.0, "label": "PER"}, MERKEL]},
            {"id": 2, "text": "Obama met Merkel", "entities": None},
            {"id": 3, "text": "Obama met Merkel"}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    whole, null, absent = _run_relations(tiny_bundle, src, tmp_path / "o.jsonl", "--pair", "--keep-none",
                                         check=check)
    assert [r["head"]["start"] for r in whole["relations"]] == [0, 10]
    # echoed as the output schema has them (`check` validates every line): text from the offsets, score 1.0
    assert whole["entities"] == [{"text": "Obama", "label": "PER", "start": 0, "end": 5, "score": 1.0},
                                 {"text": "Merkel", "label": "PER", "start": 10, "end": 16, "score": 1.0}]
    assert null["entities"] == absent["entities"] and null["relations"] == absent["relations"]
    src = write_jsonl(tmp_path / "labels.jsonl", [
        {"id": 1, "text": "Obama met Merkel", "entities": [{"start": 0, "end": 5, "label": "PERSON"}, MERKEL]}])
    [free] = _run_relations(tiny_bundle, src, tmp_path / "p.jsonl", "--pair", "--keep-none", "--no-type-constraints",
                            check=check)
    assert len(free["relations"]) == 2


def test_annotate_relations_flag(tiny_bundle, pair_input, tmp_path, check):
    result = invoke("annotate", pair_input, "-o", tmp_path / "o.jsonl", "-m", tiny_bundle, "--relations",
                    "--num-workers", "0")
    assert result.exit_code == 0, result.output
    records = read_out(tmp_path / "o.jsonl", check)
    assert all("relations" in r for r in records)
    assert sum(len(r["relations"]) for r in records) > 0
    result = invoke("annotate", pair_input, "-o", tmp_path / "p.jsonl", "-m", tiny_bundle, "--num-workers", "0")
    assert result.exit_code == 0, result.output
    plain = read_out(tmp_path / "p.jsonl", check)
    assert all("relations" not in r for r in plain)
    assert [r["entities"] for r in plain] == [r["entities"] for r in records]
