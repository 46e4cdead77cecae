"""Post-processing: BIO tags to entity spans with exact character offsets, entity pairs, relation type constraints.

No direct torch use: score arguments may be lists or anything with ``.tolist()`` (tensors, arrays).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from mmib_cli.io.records import Entity, Relation
from mmib_cli.model.configuration import NER_LABELS, RE_LABELS

logger = logging.getLogger(__name__)

__all__ = [
    "ENTITY_TYPES",
    "RELATION_SIGNATURES",
    "allowed_relations",
    "bio_to_entities",
    "candidate_pairs",
    "constrain_relation_scores",
    "enumerate_pairs",
    "relation_signature",
    "relations_from_scores",
]

ENTITY_TYPES: dict[str, str] = {"per": "PER", "org": "ORG", "loc": "LOC", "misc": "MISC"}
"""Entity type names used in MNRE relation labels, mapped to the NER labels."""

_SCORE_DECIMALS = 4


def relation_signature(label: str) -> tuple[str, str] | None:
    """The ``(head_type, tail_type)`` an MNRE label names: ``/per/org/member_of`` -> ``("PER", "ORG")``.

    Args:
        label: a relation label.

    Returns:
        The entity-type pair, or ``None`` for a label without one (``"None"`` or a label not shaped
        ``/head/tail/name``).
    """
    parts = label.split("/")
    if len(parts) < 4 or parts[0] or not parts[1] or not parts[2]:
        return None
    return ENTITY_TYPES.get(parts[1].lower(), parts[1].upper()), ENTITY_TYPES.get(parts[2].lower(), parts[2].upper())


RELATION_SIGNATURES: dict[str, tuple[str, str]] = {
    label: sig for label in RE_LABELS if (sig := relation_signature(label)) is not None
}
"""The 22 non-``None`` MNRE labels mapped to the ``(head_type, tail_type)`` their name gives."""


def _to_list(values: Any) -> list[Any]:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _span(token: Any) -> tuple[int, int]:
    if isinstance(token, Mapping):
        return int(token["start"]), int(token["end"])
    return int(token.start), int(token.end)


def _split_tag(tag: str) -> tuple[str, str | None]:
    if tag == "O":
        return "O", None
    if len(tag) > 2 and tag[1] == "-" and tag[0] in "BI":
        return tag[0], tag[2:]
    raise ValueError(f"invalid BIO tag {tag!r}: expected 'O', 'B-<type>' or 'I-<type>'")


def _clamp_score(value: float) -> float:
    return round(min(1.0, max(0.0, float(value))), _SCORE_DECIMALS)


def _tag_probabilities(scores: Any, tags: Sequence[str], labels: Sequence[str]) -> list[float]:
    """Per-token probability of the predicted tag from per-token floats or ``(words, tags)`` marginals."""
    if scores is None:
        return [1.0] * len(tags)
    rows = _to_list(scores)
    if len(rows) < len(tags):
        raise ValueError(f"{len(rows)} scores for {len(tags)} tags")
    rows = rows[: len(tags)]
    if not rows or not isinstance(rows[0], (list, tuple)):
        return [float(r) for r in rows]
    index = {label: i for i, label in enumerate(labels)}
    probs = []
    for tag, row in zip(tags, rows):
        if tag not in index:
            raise ValueError(f"tag {tag!r} is not in the label list {list(labels)}")
        probs.append(float(row[index[tag]]))
    return probs


def bio_to_entities(
    tokens: Sequence[Any],
    tags: Sequence[str],
    text: str,
    scores: Any = None,
    *,
    labels: Sequence[str] = NER_LABELS,
) -> list[Entity]:
    """Turn per-token BIO tags into entity spans with exact character offsets and a confidence score.

    Conlleval convention: ``B-X`` always starts an entity; ``I-X`` continues an entity of type X, or starts one
    when the previous tag is ``O`` or of another type. ``start`` is the first token's start, ``end`` the last
    token's end, ``text == text[start:end]`` (so inner spaces and zero-width characters are kept). ``score`` is the
    mean, over the entity's tokens, of the probability of the predicted tag, rounded to 4 decimals.

    Args:
        tokens: words with ``start``/``end`` code-point offsets (``mmib_cli.text.Token`` or dicts).
        tags: one BIO tag per token.
        text: the post text the offsets refer to.
        scores: ``None`` (score 1.0), one probability per token, or ``(num_tokens, num_labels)`` marginals (list of
            rows, tensor or array) indexed by ``labels``; extra (padding) rows are ignored.
        labels: tag names of the marginal columns, in id order.

    Returns:
        Entities in text order: ``{"text", "label", "start", "end", "score"}``.

    Raises:
        ValueError: lengths differ, a tag is malformed, or a token's offsets fall outside ``text``.
    """
    if len(tags) != len(tokens):
        raise ValueError(f"{len(tags)} tags for {len(tokens)} tokens")
    probs = _tag_probabilities(scores, tags, labels)
    entities: list[Entity] = []

    def close(first: int, last: int, label: str) -> None:
        start, end = _span(tokens[first])[0], _span(tokens[last])[1]
        if not 0 <= start < end <= len(text):
            raise ValueError(f"token offsets [{start}, {end}) fall outside the text (length {len(text)})")
        mean = math.fsum(probs[first : last + 1]) / (last - first + 1)
        entities.append({"text": text[start:end], "label": label, "start": start, "end": end,
                         "score": _clamp_score(mean)})

    current: tuple[int, str] | None = None  # (first token index, type)
    for i, tag in enumerate(tags):
        prefix, label = _split_tag(tag)
        if prefix == "I" and current is not None and current[1] == label:
            continue
        if current is not None:
            close(current[0], i - 1, current[1])
        current = (i, label) if label is not None else None
    if current is not None:
        close(current[0], len(tags) - 1, current[1])
    return entities


def _is_none_label(index: int, label: str) -> bool:
    return index == 0 or label == "None"


def allowed_relations(head_label: str, tail_label: str, labels: Sequence[str] = RE_LABELS) -> list[int]:
    """Ids of the relation labels allowed between a head and a tail entity type.

    ``None`` (id 0) is always allowed; a label whose name gives no type pair (see ``relation_signature``) is never
    ruled out.

    Args:
        head_label: entity type of the head (``PER``, ``ORG``, ``LOC``, ``MISC``; case-insensitive).
        tail_label: entity type of the tail.
        labels: relation labels in id order.

    Returns:
        Allowed ids, ascending.
    """
    pair = (head_label.upper(), tail_label.upper())
    allowed = []
    for i, label in enumerate(labels):
        sig = relation_signature(label)
        if _is_none_label(i, label) or sig is None or sig == pair:
            allowed.append(i)
    return allowed


def enumerate_pairs(entities: Sequence[Any]) -> list[tuple[int, int]]:
    """All ordered pairs ``(head, tail)`` of distinct entity indices: ``(0, 1), (0, 2), ..., (1, 0), (1, 2), ...``.

    Args:
        entities: the entities of one post.

    Returns:
        ``n * (n - 1)`` index pairs in head-major, then tail, order.
    """
    n = len(entities)
    return [(i, j) for i in range(n) for j in range(n) if i != j]


def candidate_pairs(entities: Sequence[Entity], labels: Sequence[str] = RE_LABELS) -> list[tuple[int, int]]:
    """The ``enumerate_pairs`` whose entity types admit at least one relation other than ``None``.

    Args:
        entities: the entities of one post (with ``label``).
        labels: relation labels in id order.

    Returns:
        Index pairs, in ``enumerate_pairs`` order.
    """
    keep = []
    for i, j in enumerate_pairs(entities):
        allowed = allowed_relations(entities[i]["label"], entities[j]["label"], labels)
        if any(not _is_none_label(k, labels[k]) for k in allowed):
            keep.append((i, j))
    return keep


def constrain_relation_scores(
    probs: Any, head_label: str, tail_label: str, labels: Sequence[str] = RE_LABELS
) -> tuple[str, float]:
    """Pick the best relation allowed for the entity types: zero out the others, renormalise, take the argmax.

    Ties go to the lowest id. When every allowed label has probability 0, the allowed labels count as equally
    likely.

    Args:
        probs: ``(num_labels,)`` probabilities (list, tensor or array) in ``labels`` order.
        head_label: entity type of the head.
        tail_label: entity type of the tail.
        labels: relation labels in id order.

    Returns:
        ``(label, score)``, the score being the renormalised probability rounded to 4 decimals.

    Raises:
        ValueError: ``probs`` has the wrong length or holds negative / NaN values.
    """
    values = [float(v) for v in _to_list(probs)]
    if len(values) != len(labels):
        raise ValueError(f"{len(values)} relation probabilities for {len(labels)} labels")
    if any(not v >= 0.0 for v in values):
        raise ValueError(f"relation probabilities must be non-negative numbers, got {values}")
    allowed = allowed_relations(head_label, tail_label, labels)
    mass = math.fsum(values[i] for i in allowed)
    best = min(allowed, key=lambda i: (-values[i], i))
    score = 1.0 / len(allowed) if mass <= 0.0 else values[best] / mass
    return labels[best], _clamp_score(score)


def relations_from_scores(
    entities: Sequence[Entity],
    pairs: Sequence[tuple[int, int]],
    probs: Any,
    labels: Sequence[str] = RE_LABELS,
    *,
    keep_none: bool = False,
) -> list[Relation]:
    """Relation records for scored entity pairs, after the type constraint.

    Args:
        entities: the entities of one post.
        pairs: ``(head, tail)`` index pairs, one per row of ``probs``.
        probs: ``(num_pairs, num_labels)`` probabilities.
        labels: relation labels in id order.
        keep_none: also return pairs whose best allowed label is ``None``.

    Returns:
        ``{"head", "tail", "relation", "score"}`` records in ``pairs`` order (entities copied).

    Raises:
        ValueError: ``probs`` and ``pairs`` differ in length (or see ``constrain_relation_scores``).
    """
    rows = _to_list(probs)
    if len(rows) != len(pairs):
        raise ValueError(f"{len(rows)} probability rows for {len(pairs)} pairs")
    relations: list[Relation] = []
    for (i, j), row in zip(pairs, rows):
        head, tail = entities[i], entities[j]
        label, score = constrain_relation_scores(row, head["label"], tail["label"], labels)
        if not keep_none and label == labels[0]:
            continue
        relations.append({"head": head.copy(), "tail": tail.copy(), "relation": label, "score": score})
    return relations
