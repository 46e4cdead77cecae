"""BIO tags to entity spans (exact offsets on hard Unicode), entity pairs and relation type constraints."""
from __future__ import annotations

import re

import pytest
import torch

from mmib_cli.model.configuration import NER_LABELS, RE_LABELS
from mmib_cli.annotation.postprocess import (
    RELATION_SIGNATURES,
    allowed_relations,
    bio_to_entities,
    constrain_relation_scores,
    relation_signature,
    relations_from_scores,
    select_pairs,
)
from mmib_cli.text import Token


def _words(text: str) -> list[Token]:
    """Whitespace tokens with offsets (zero-width and combining characters are not whitespace)."""
    return [Token(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def _spans(entities):
    return [(e["text"], e["label"], e["start"], e["end"]) for e in entities]


# ---------------------------------------------------------------------------------------------- BIO -> spans


def test_basic_entities_with_offsets():
    text = "RT @ warriors : Kawhi Leonard visits New  York"
    tokens = _words(text)
    tags = ["O", "O", "B-ORG", "O", "B-PER", "I-PER", "O", "B-LOC", "I-LOC"]
    entities = bio_to_entities(tokens, tags, text)
    assert _spans(entities) == [("warriors", "ORG", 5, 13), ("Kawhi Leonard", "PER", 16, 29),
                                ("New  York", "LOC", 37, 46)]  # inner double space kept: text[start:end]
    assert all(e["score"] == 1.0 for e in entities)
    assert list(entities[0]) == ["text", "label", "start", "end", "score"]


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["O", "I-LOC", "I-LOC", "O"], [("b c", "LOC")]),  # I- without B- starts an entity
        (["I-PER", "O", "O", "O"], [("a", "PER")]),  # ... also at the very start
        (["B-PER", "I-LOC", "O", "O"], [("a", "PER"), ("b", "LOC")]),  # I- of another type starts a new one
        (["B-PER", "B-LOC", "O", "O"], [("a", "PER"), ("b", "LOC")]),  # adjacent, different types
        (["B-PER", "B-PER", "O", "O"], [("a", "PER"), ("b", "PER")]),  # adjacent, same type
        (["B-PER", "I-PER", "B-PER", "I-PER"], [("a b", "PER"), ("c d", "PER")]),
        (["I-ORG", "I-ORG", "I-MISC", "I-MISC"], [("a b", "ORG"), ("c d", "MISC")]),
        (["O", "O", "O", "B-MISC"], [("d", "MISC")]),  # entity closed at the end
        (["B-ORG", "I-ORG", "I-ORG", "I-ORG"], [("a b c d", "ORG")]),
        (["O", "O", "O", "O"], []),
    ],
)
def test_bio_conventions(tags, expected):
    text = "a b c d"
    assert [(e["text"], e["label"]) for e in bio_to_entities(_words(text), tags, text)] == expected


@pytest.mark.parametrize(
    ("text", "tags", "expected"),
    [
        # emoji (multi-code-point flag and ZWJ family), a variation selector
        ("I ❤️ Paris 🇫🇷 with 👨‍👩‍👧 Zoé", ["O", "O", "B-LOC", "O", "O", "O", "B-PER"], ["Paris", "Zoé"]),
        ("🇫🇷 France 🇫🇷 wins", ["O", "B-LOC", "O", "O"], ["France"]),
        # right-to-left scripts
        ("محمد صلاح يلعب في ليفربول", ["B-PER", "I-PER", "O", "O", "B-ORG"], ["محمد صلاح", "ليفربول"]),
        ("שלום from תל אביב !", ["O", "O", "B-LOC", "I-LOC", "O"], ["תל אביב"]),
        # zero-width characters inside and around words
        ("Jo\u200bhn Smith\u200d visits Ber\u200clin", ["B-PER", "I-PER", "O", "B-LOC"],
         ["Jo\u200bhn Smith\u200d", "Ber\u200clin"]),
        ("\u200b\ufeffObama\u200b speaks", ["B-PER", "O"], ["\u200b\ufeffObama\u200b"]),
        # combining marks (decomposed accents) and astral-plane letters
        ("Jose\u0301 Mourinho manages Ma\u0301laga", ["B-PER", "I-PER", "O", "B-ORG"],
         ["Jose\u0301 Mourinho", "Ma\u0301laga"]),
        ("𝐊𝐚𝐰𝐡𝐢 Leonard 🏀", ["B-PER", "I-PER", "O"], ["𝐊𝐚𝐰𝐡𝐢 Leonard"]),
    ],
)
def test_offsets_are_exact_on_hard_unicode(text, tags, expected):
    tokens = _words(text)
    assert len(tokens) == len(tags)
    entities = bio_to_entities(tokens, tags, text)
    assert [e["text"] for e in entities] == expected
    for entity in entities:
        assert text[entity["start"] : entity["end"]] == entity["text"]


def test_with_the_real_tokenizer():
    from mmib_cli.text import tokenize

    text = "RT @warriors: Jose\u0301 Mourinho 👨\u200d👩\u200d👧 visits #NewYork!"
    tokens = tokenize(text)
    words = [t.text for t in tokens]
    tags = ["O"] * len(tokens)
    tags[words.index("warriors")] = "B-ORG"
    tags[words.index("Jose\u0301")] = "B-PER"
    tags[words.index("Mourinho")] = "I-PER"
    tags[words.index("NewYork")] = "B-LOC"
    entities = bio_to_entities(tokens, tags, text)
    assert [(e["text"], e["label"]) for e in entities] == [
        ("warriors", "ORG"), ("Jose\u0301 Mourinho", "PER"), ("NewYork", "LOC")]
    assert all(text[e["start"] : e["end"]] == e["text"] for e in entities)


def test_tokens_with_gaps_keep_text_between_them():
    text = "New-York"
    tokens = [Token("New", 0, 3), Token("York", 4, 8)]  # the hyphen is not a token
    assert _spans(bio_to_entities(tokens, ["B-LOC", "I-LOC"], text)) == [("New-York", "LOC", 0, 8)]


def test_tokens_may_be_dicts():
    text = "Obama smiles"
    tokens = [{"text": "Obama", "start": 0, "end": 5}, {"text": "smiles", "start": 6, "end": 12}]
    assert _spans(bio_to_entities(tokens, ["B-PER", "O"], text)) == [("Obama", "PER", 0, 5)]


def test_empty_post():
    assert bio_to_entities([], [], "") == []


def test_score_is_mean_of_per_token_probabilities_rounded():
    text = "Kawhi Leonard visits Toronto"
    entities = bio_to_entities(_words(text), ["B-PER", "I-PER", "O", "B-LOC"], text, [0.9, 0.71111, 0.2, 0.123456])
    assert [e["score"] for e in entities] == [round((0.9 + 0.71111) / 2, 4), 0.1235]


def test_score_from_marginals_picks_predicted_tag_and_ignores_padding():
    text = "Kawhi Leonard"
    tags = ["B-PER", "I-PER"]
    marginals = torch.zeros(4, len(NER_LABELS))  # 2 padding rows
    marginals[0, NER_LABELS.index("B-PER")] = 0.8
    marginals[0, 0] = 0.2
    marginals[1, NER_LABELS.index("I-PER")] = 0.6
    marginals[1, NER_LABELS.index("B-LOC")] = 0.4
    (entity,) = bio_to_entities(_words(text), tags, text, marginals)
    assert entity["score"] == 0.7
    (again,) = bio_to_entities(_words(text), tags, text, marginals.tolist(), labels=NER_LABELS)
    assert again["score"] == 0.7


def test_marginals_with_custom_label_order():
    labels = ["B-X", "O", "I-X"]
    (entity,) = bio_to_entities(_words("a b"), ["B-X", "I-X"], "a b", [[0.5, 0.5, 0.0], [0.0, 0.1, 0.9]],
                                labels=labels)
    assert entity["score"] == 0.7 and entity["label"] == "X"


def test_score_is_clamped_to_one():
    (entity,) = bio_to_entities(_words("a"), ["B-PER"], "a", [1.0000001])
    assert entity["score"] == 1.0


@pytest.mark.parametrize(
    ("tokens", "tags", "text", "scores", "match"),
    [
        ([Token("a", 0, 1)], ["O", "O"], "a", None, "2 tags for 1 tokens"),
        ([Token("a", 0, 1)], ["X-PER"], "a", None, "invalid BIO tag"),
        ([Token("a", 0, 1)], ["B-"], "a", None, "invalid BIO tag"),
        ([Token("a", 0, 1)], ["PER"], "a", None, "invalid BIO tag"),
        ([Token("a", 5, 6)], ["B-PER"], "a", None, "outside the text"),
        ([Token("a", 0, 1), Token("b", 2, 3)], ["B-PER", "O"], "a b", [0.5], "1 scores for 2 tags"),
        ([Token("a", 0, 1)], ["B-FOO"], "a", [[1.0] * len(NER_LABELS)], "not in the label list"),
    ],
)
def test_bio_to_entities_rejects_inconsistent_input(tokens, tags, text, scores, match):
    with pytest.raises(ValueError, match=match):
        bio_to_entities(tokens, tags, text, scores)


# ------------------------------------------------------------------------------------------ relation types


def test_relation_signatures_cover_the_22_mnre_labels():
    assert len(RELATION_SIGNATURES) == 22
    assert set(RELATION_SIGNATURES) == set(RE_LABELS[1:])
    assert RELATION_SIGNATURES["/per/org/member_of"] == ("PER", "ORG")
    assert RELATION_SIGNATURES["/per/per/alumi"] == ("PER", "PER")
    assert RELATION_SIGNATURES["/misc/loc/held_on"] == ("MISC", "LOC")
    assert RELATION_SIGNATURES["/org/loc/locate_at"] == ("ORG", "LOC")
    assert RELATION_SIGNATURES["/per/misc/nationality"] == ("PER", "MISC")
    assert {t for pair in RELATION_SIGNATURES.values() for t in pair} == {"PER", "ORG", "LOC", "MISC"}


@pytest.mark.parametrize("label", ["None", "", "per/org/x", "/per//x", "/per/org"])
def test_relation_signature_of_labels_without_types(label):
    assert relation_signature(label) is None


def test_allowed_relations_by_entity_types():
    assert allowed_relations("PER", "ORG", RE_LABELS) == [0, 9]
    assert allowed_relations("PER", "PER", RE_LABELS) == list(range(9))
    assert allowed_relations("per", "loc", RE_LABELS) == [0, 10, 11]
    assert allowed_relations("MISC", "LOC", RE_LABELS) == [0, 22]
    assert allowed_relations("LOC", "PER", RE_LABELS) == [0]  # reversed direction: only None
    assert allowed_relations("PER", "ORG") == [0, 9]  # default label list


def test_allowed_relations_follow_the_given_label_order():
    labels = ["/per/org/member_of", "None", "/org/loc/locate_at", "custom"]
    assert allowed_relations("PER", "ORG", labels) == [0, 1, 3]  # id 0 always; untyped "custom" never ruled out
    assert allowed_relations("ORG", "LOC", labels) == [0, 1, 2, 3]


def _entity(text: str, label: str, start: int) -> dict:
    return {"text": text, "label": label, "start": start, "end": start + len(text), "score": 0.9}


def test_select_pairs_without_constraints_is_every_ordered_pair():
    def unlabelled(n):
        return [{"text": chr(97 + i), "start": 3 * i, "end": 3 * i + 1} for i in range(n)]

    assert select_pairs([]).pairs == [] and select_pairs(unlabelled(1)).pairs == []
    assert select_pairs(unlabelled(3)).pairs == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    every = select_pairs(unlabelled(7), type_constraints=False)
    assert len(every.pairs) == every.candidates == 42 and not every.capped


def test_candidate_pairs_drop_pairs_with_no_possible_relation():
    entities = [_entity("Kawhi", "PER", 0), _entity("Toronto", "LOC", 10), _entity("Raptors", "ORG", 20)]
    # PER->LOC, PER->ORG, ORG->LOC are possible; LOC->PER, LOC->ORG, ORG->PER are not
    assert select_pairs(entities).pairs == [(0, 1), (0, 2), (2, 1)]
    assert len(select_pairs(entities, type_constraints=False).pairs) == 6


def _probs(by_label: dict[str, float]) -> list[float]:
    probs = [0.0] * len(RE_LABELS)
    for label, p in by_label.items():
        probs[RE_LABELS.index(label)] = p
    return probs


def test_constraint_masks_disallowed_labels_and_renormalises():
    probs = _probs({"None": 0.1, "/per/per/parent": 0.6, "/per/org/member_of": 0.3})
    label, score = constrain_relation_scores(probs, "PER", "ORG", RE_LABELS)
    assert (label, score) == ("/per/org/member_of", round(0.3 / 0.4, 4))
    label, score = constrain_relation_scores(probs, "PER", "PER", RE_LABELS)
    assert (label, score) == ("/per/per/parent", round(0.6 / 0.7, 4))
    assert constrain_relation_scores(probs, "LOC", "ORG", RE_LABELS) == ("None", 1.0)


def test_constraint_ties_and_zero_mass():
    probs = [0.0] * len(RE_LABELS)
    probs[5] = 1.0  # only a disallowed label has mass
    assert constrain_relation_scores(probs, "PER", "ORG", RE_LABELS) == ("None", 0.5)
    tie = [0.0] * len(RE_LABELS)
    tie[0] = tie[9] = 0.5
    assert constrain_relation_scores(tie, "PER", "ORG", RE_LABELS) == ("None", 0.5)


def test_constraint_accepts_tensors():
    probs = torch.softmax(torch.arange(len(RE_LABELS), dtype=torch.float32), dim=0)
    label, score = constrain_relation_scores(probs, "MISC", "LOC")
    expected = probs[22] / (probs[0] + probs[22])
    assert label == "/misc/loc/held_on" and score == pytest.approx(float(expected), abs=1e-4)


@pytest.mark.parametrize("probs", [[0.5, 0.5], [-0.1] + [0.1] * 22, [float("nan")] + [0.0] * 22])
def test_constraint_rejects_bad_probabilities(probs):
    with pytest.raises(ValueError):
        constrain_relation_scores(probs, "PER", "ORG", RE_LABELS)


def test_relations_from_scores():
    entities = [_entity("Kawhi", "PER", 0), _entity("Raptors", "ORG", 10)]
    pairs = [(0, 1), (1, 0)]
    member = [0.0] * len(RE_LABELS)
    member[0], member[9] = 0.2, 0.8
    reverse = [0.0] * len(RE_LABELS)
    reverse[9] = 1.0  # ORG -> PER cannot be member_of
    relations = relations_from_scores(entities, pairs, [member, reverse], RE_LABELS)
    assert relations == [{"head": entities[0], "tail": entities[1], "relation": "/per/org/member_of", "score": 0.8}]
    assert relations[0]["head"] is not entities[0]  # copies, safe to mutate
    kept = relations_from_scores(entities, pairs, torch.tensor([member, reverse]), RE_LABELS, keep_none=True)
    assert [r["relation"] for r in kept] == ["/per/org/member_of", "None"]
    with pytest.raises(ValueError, match="1 probability rows for 2 pairs"):
        relations_from_scores(entities, pairs, [member], RE_LABELS)
