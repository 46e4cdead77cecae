"""Post-processing: BIO tags to entity spans with exact character offsets; which entity pairs to classify; relation
scores to relation records (calibration, type constraints, direction rules).

No direct torch use: score arguments may be lists or anything with ``.tolist()`` (tensors, arrays).
"""
from __future__ import annotations

import heapq
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mmib_cli.choices import DEFAULT_MIN_SCORE
from mmib_cli.io.records import Entity, Relation
from mmib_cli.model.configuration import NER_LABELS, RE_LABELS

logger = logging.getLogger(__name__)

__all__ = [
    "ENTITY_TYPES",
    "RELATION_SIGNATURES",
    "SYMMETRIC_RELATION_NAMES",
    "PairSelection",
    "allowed_relations",
    "bio_to_entities",
    "calibrate",
    "constrain_relation_scores",
    "is_symmetric",
    "output_entity",
    "relation_entity_types",
    "relation_signature",
    "relations_from_scores",
    "select_pairs",
    "same_entity",
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


def relation_entity_types(labels: Sequence[str]) -> frozenset[str]:
    """The entity types the signatures of `labels` name (``PER``, ``ORG``, ...); empty when no label has one."""
    return frozenset(kind for label in labels if (sig := relation_signature(label)) for kind in sig)


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


SYMMETRIC_RELATION_NAMES = frozenset({"peer", "couple", "siblings", "neighbor", "alumi", "alternate_names"})
"""Names (last path part) of the relations that hold both ways: `/per/per/peer`, `/org/org/alternate_names`...
Every other label except ``None`` is asymmetric (`parent`, `charges`, `subsidiary`, `contain`, `part_of`, and the
cross-type ones such as `member_of`), including labels of custom checkpoints this list does not know."""


def is_symmetric(label: str) -> bool:
    """Whether a relation label holds both ways (its last path part is in ``SYMMETRIC_RELATION_NAMES``)."""
    return label.rsplit("/", 1)[-1] in SYMMETRIC_RELATION_NAMES


def same_entity(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two mentions must not be related: overlapping spans (the same span included), or two mentions of
    the same name (equal text ignoring case and a leading ``@``/``#``: ``Yale`` ... ``yale``)."""
    if int(a["start"]) < int(b["end"]) and int(b["start"]) < int(a["end"]):
        return True
    return _name(a) == _name(b) != ""


def _name(entity: Mapping[str, Any]) -> str:
    return str(entity.get("text", "")).strip().lstrip("@#").casefold()


@dataclass
class PairSelection:
    """The ordered entity pairs of one post chosen for relation scoring.

    Attributes:
        pairs: ``(head, tail)`` entity indices to score, in output order (``select_pairs``: by head, then tail).
        candidates: ordered pairs that qualified before the cap (``len(pairs)`` when nothing was capped).
    """

    pairs: list[tuple[int, int]]
    candidates: int

    @property
    def capped(self) -> bool:
        return len(self.pairs) < self.candidates


class _TypeFilter:
    """Whether a head/tail type pair admits a relation other than ``None`` (memoised: a post has few type pairs)."""

    def __init__(self, labels: Sequence[str], enabled: bool) -> None:
        self.labels, self.enabled = labels, enabled
        self._memo: dict[tuple[str, str], bool] = {}

    def admits(self, head: Mapping[str, Any], tail: Mapping[str, Any]) -> bool:
        return self.admits_labels(head.get("label"), tail.get("label"))

    def directions(self, a: Any, b: Any) -> int:
        """How many of the two directions between entities labelled `a` and `b` admit a relation (0, 1 or 2)."""
        return self.admits_labels(a, b) + self.admits_labels(b, a)

    def admits_labels(self, h: Any, t: Any) -> bool:
        if not (self.enabled and h and t):
            return True
        key = (str(h), str(t))
        if key not in self._memo:
            self._memo[key] = any(not _is_none_label(k, self.labels[k])
                                  for k in allowed_relations(key[0], key[1], self.labels))
        return self._memo[key]


def select_pairs(entities: Sequence[Mapping[str, Any]], labels: Sequence[str] = RE_LABELS, *,
                 type_constraints: bool = True, max_pairs: int | None = None) -> PairSelection:
    """Choose the ordered entity pairs of one post to classify, nearest pairs first, at most ``max_pairs``.

    A pair never relates an entity to itself, to another mention of the same name or to an overlapping span. With ``type_constraints``, a direction
    whose entity types admit no relation but ``None`` is left out. When there are more than
    ``max_pairs`` candidates, pairs are taken in a fixed order, so a capped run is reproducible: entities sorted by
    position, then pairs of neighbours first (1 entity apart, then 2, ...), left to right; both directions of a pair
    are taken together, so the direction rules of ``relations_from_scores`` can compare them.

    Args:
        entities: the entities of one post (``start``/``end``, optional ``label``).
        labels: relation labels of the model, in id order.
        type_constraints: drop directions whose entity types admit no relation.
        max_pairs: most ordered pairs to return; None or 0 for no cap.

    Returns:
        The selected pairs (head-major order) and how many qualified before the cap.
    """
    types = _TypeFilter(labels, type_constraints)
    order = sorted(range(len(entities)), key=lambda i: (int(entities[i]["start"]), int(entities[i]["end"]), i))
    chosen: list[tuple[int, int]] = []
    budget = max(PAIR_CHECKS, 4 * max_pairs) if max_pairs else None
    checks = 0
    for gap in range(1, len(order)):
        for pos in range(len(order) - gap):
            checks += 1
            if budget is not None and checks > budget:
                break
            a, b = order[pos], order[pos + gap]
            if same_entity(entities[a], entities[b]):
                continue
            directions = [(h, t) for h, t in ((a, b), (b, a)) if types.admits(entities[h], entities[t])]
            if max_pairs and len(chosen) + len(directions) > max_pairs:
                budget = 0  # full: the rest is only counted
                break
            chosen.extend(directions)
        if budget is not None and checks > budget:
            break
    return PairSelection(sorted(chosen), count_candidates(entities, types))


PAIR_CHECKS = 1_000_000
"""Entity pairs `select_pairs` looks at, nearest first, before it stops choosing (at least 4 x `max_pairs`): bounds
the time of a post with tens of thousands of entities whose pairs are mostly excluded (overlapping or same-name)."""


def count_candidates(entities: Sequence[Mapping[str, Any]], types: _TypeFilter) -> int:
    """Ordered pairs `select_pairs` would qualify without a cap, counted in O(n log n) instead of enumerated.

    All pairs by label, minus the pairs `same_entity` excludes: overlapping ones, plus same-name ones that do not
    overlap (each pair weighted by how many of its directions the types admit).
    """
    def label(entity: Mapping[str, Any]) -> Any:
        return entity.get("label")

    total = _label_pair_weight([label(e) for e in entities], types)
    total -= _overlap_weight(entities, types)
    names: dict[str, list[Mapping[str, Any]]] = {}
    for entity in entities:
        if _name(entity):
            names.setdefault(_name(entity), []).append(entity)
    for group in names.values():
        if len(group) > 1:
            total -= _label_pair_weight([label(e) for e in group], types) - _overlap_weight(group, types)
    return total


def _label_pair_weight(labels: Sequence[Any], types: _TypeFilter) -> int:
    """Admitted directions over all unordered pairs of entities with these labels."""
    counts = Counter(labels)
    keys = list(counts)
    weight = 0
    for i, a in enumerate(keys):
        weight += types.directions(a, a) * counts[a] * (counts[a] - 1) // 2
        weight += sum(types.directions(a, b) * counts[a] * counts[b] for b in keys[i + 1:])
    return weight


def _overlap_weight(entities: Sequence[Mapping[str, Any]], types: _TypeFilter) -> int:
    """Admitted directions over the unordered pairs of overlapping entities (a sweep over starts, not all pairs)."""
    active: list[tuple[int, int, Any]] = []  # heap of (end, tie-breaker, label) of entities still open
    open_labels: Counter[Any] = Counter()
    weight = 0
    for k, entity in enumerate(sorted(entities, key=lambda e: (int(e["start"]), int(e["end"])))):
        start, lab = int(entity["start"]), entity.get("label")
        while active and active[0][0] <= start:
            open_labels[heapq.heappop(active)[2]] -= 1
        weight += sum(count * types.directions(other, lab) for other, count in open_labels.items() if count)
        heapq.heappush(active, (int(entity["end"]), k, lab))
        open_labels[lab] += 1
    return weight


def default_min_score(config: Any) -> float:
    """The `--min-score` of an RE checkpoint when none is given: its calibrated ``relation_min_score``, else
    ``DEFAULT_MIN_SCORE``."""
    return DEFAULT_MIN_SCORE if config.relation_min_score is None else config.relation_min_score


def calibrate(values: Sequence[float], temperature: float = 1.0) -> list[float]:
    """Apply a calibration temperature to probabilities: ``softmax(log(p) / T)``, i.e. ``p ** (1/T)`` renormalised.

    ``T > 1`` flattens over-confident scores, ``T = 1`` returns them unchanged; the argmax never changes.

    Raises:
        ValueError: ``temperature`` is not a positive finite number.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if temperature == 1.0:
        return list(values)
    logs = [math.log(v) / temperature if v > 0 else -math.inf for v in values]
    top = max(logs)
    if top == -math.inf:
        return list(values)
    powered = [math.exp(x - top) for x in logs]
    total = math.fsum(powered)
    return [p / total for p in powered]


def _check_probabilities(probs: Any, labels: Sequence[str]) -> list[float]:
    values = [float(v) for v in _to_list(probs)]
    if len(values) != len(labels):
        raise ValueError(f"{len(values)} relation probabilities for {len(labels)} labels")
    if any(not v >= 0.0 for v in values):
        raise ValueError(f"relation probabilities must be non-negative numbers, got {values}")
    return values


def _best_allowed(values: Sequence[float], allowed: Sequence[int]) -> tuple[int, float]:
    """The best allowed label id and its probability renormalised over the allowed labels (ties: lowest id)."""
    mass = math.fsum(values[i] for i in allowed)
    best = min(allowed, key=lambda i: (-values[i], i))
    return best, (1.0 / len(allowed) if mass <= 0.0 else values[best] / mass)


def constrain_relation_scores(
    probs: Any, head_label: str, tail_label: str, labels: Sequence[str] = RE_LABELS, *, temperature: float = 1.0
) -> tuple[str, float]:
    """Pick the best relation allowed for the entity types: zero out the others, renormalise, take the argmax.

    Ties go to the lowest id. When every allowed label has probability 0, the allowed labels count as equally
    likely.

    Args:
        probs: ``(num_labels,)`` probabilities (list, tensor or array) in ``labels`` order.
        head_label: entity type of the head.
        tail_label: entity type of the tail.
        labels: relation labels in id order.
        temperature: calibration temperature applied first (see ``calibrate``).

    Returns:
        ``(label, score)``, the score being the renormalised probability rounded to 4 decimals.

    Raises:
        ValueError: ``probs`` has the wrong length or holds negative / NaN values.
    """
    values = calibrate(_check_probabilities(probs, labels), temperature)
    best, score = _best_allowed(values, allowed_relations(head_label, tail_label, labels))
    return labels[best], _clamp_score(score)


@dataclass
class _Scored:
    """One scored ordered pair: its row in the input, the best allowed label, and the renormalised distribution."""

    row: int
    head: int
    tail: int
    label: int
    score: float
    allowed_mass: list[float]  # calibrated probabilities renormalised over the allowed labels (0 elsewhere)


def _score_pair(row: int, head: int, tail: int, values: list[float], entities: Sequence[Mapping[str, Any]],
                labels: Sequence[str], type_constraints: bool) -> _Scored:
    h, t = entities[head].get("label"), entities[tail].get("label")
    allowed = (allowed_relations(str(h), str(t), labels) if type_constraints and h and t
               else list(range(len(labels))))
    mass = math.fsum(values[i] for i in allowed)
    dist = [0.0] * len(labels)
    for i in allowed:
        dist[i] = values[i] / mass if mass > 0 else 1.0 / len(allowed)
    best, score = _best_allowed(values, allowed)
    return _Scored(row, head, tail, best, score, dist)


def _relation_record(entities: Sequence[Mapping[str, Any]], item: _Scored, label: str, score: float) -> Relation:
    head_type, tail_type = relation_signature(label) or ("MISC", "MISC")
    return {"head": output_entity(entities[item.head], head_type),
            "tail": output_entity(entities[item.tail], tail_type), "relation": label, "score": _clamp_score(score)}


def output_entity(entity: Mapping[str, Any], fallback_label: str) -> Entity:
    """An entity as the output schema wants it (``text, label, start, end, score``), a copy.

    Entities given by the input may lack a label (MNRE ``h``/``t``) and a score: the label then comes from the
    relation's signature (``/per/org/...`` gives PER, ORG; MISC for ``None``), and a given entity scores 1.0.
    """
    return {"text": entity["text"], "label": str(entity.get("label") or fallback_label),
            "start": int(entity["start"]), "end": int(entity["end"]), "score": float(entity.get("score", 1.0))}


def relations_from_scores(
    entities: Sequence[Mapping[str, Any]],
    pairs: Sequence[tuple[int, int]],
    probs: Any,
    labels: Sequence[str] = RE_LABELS,
    *,
    keep_none: bool = False,
    type_constraints: bool = True,
    temperature: float = 1.0,
    min_score: float = 0.0,
) -> list[Relation]:
    """Relation records for scored entity pairs: the one decoding path of `annotate --relations` and `relations`.

    Per ordered pair, the calibrated probabilities (``calibrate``) are restricted to the labels the entity types
    allow (when ``type_constraints`` and both entities have a type) and renormalised; the best label wins. Then the
    rules that make the result consistent on open text apply to the two directions of each entity pair:

    - an entity is never related to itself, to another mention of the same name, or to an overlapping span
      (``same_entity``; such pairs give no record at all);
    - one relation per entity pair: the higher-scoring of the two directions' labels other than ``None`` wins;
    - an asymmetric relation (``parent``, ``contain``, ``member_of``...; see ``is_symmetric``) is emitted in the
      winning direction only; the other direction counts as ``None``;
    - a symmetric relation (``peer``, ``couple``, ``siblings``, ``neighbor``, ``alumi``, ``alternate_names``) is
      emitted for every scored direction of the pair, with the same label and score.

    Args:
        entities: the entities of one post (``text, start, end``, optional ``label``/``score``).
        pairs: ``(head, tail)`` index pairs, one per row of ``probs``.
        probs: ``(num_pairs, num_labels)`` probabilities.
        labels: relation labels in id order (the loaded model's).
        keep_none: also return pairs whose outcome is ``None`` (scored by their probability of ``None``).
        type_constraints: restrict each pair to the labels its entity types allow.
        temperature: calibration temperature (the RE checkpoint's ``relation_temperature``).
        min_score: drop records scored below this.

    Returns:
        ``{"head", "tail", "relation", "score"}`` records in ``pairs`` order (entities copied).

    Raises:
        ValueError: ``probs`` and ``pairs`` differ in length, or a row is not a probability vector.
    """
    rows = _to_list(probs)
    if len(rows) != len(pairs):
        raise ValueError(f"{len(rows)} probability rows for {len(pairs)} pairs")
    groups: dict[tuple[int, int], list[_Scored]] = {}
    for n, ((i, j), row) in enumerate(zip(pairs, rows)):
        values = calibrate(_check_probabilities(row, labels), temperature)
        if i == j or same_entity(entities[i], entities[j]):
            continue
        groups.setdefault((min(i, j), max(i, j)), []).append(
            _score_pair(n, i, j, values, entities, labels, type_constraints))
    decided: dict[int, tuple[str, float]] = {}
    for group in groups.values():
        related = [s for s in group if not _is_none_label(s.label, labels[s.label])]
        winner = max(related, key=lambda s: (s.score, -s.row)) if related else None
        for item in group:
            if winner is None or (item is not winner and not is_symmetric(labels[winner.label])):
                decided[item.row] = (labels[0], item.allowed_mass[0])  # None, scored by its own P(None)
            else:
                decided[item.row] = (labels[winner.label], winner.score)
    relations: list[Relation] = []
    for item in sorted((s for g in groups.values() for s in g), key=lambda s: s.row):
        label, score = decided[item.row]
        if (label == labels[0] and not keep_none) or _clamp_score(score) < min_score:
            continue
        relations.append(_relation_record(entities, item, label, score))
    return relations
