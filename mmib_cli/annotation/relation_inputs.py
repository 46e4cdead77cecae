"""The relation inputs of a post: given `entities`, given `pairs` or MNRE `h`/`t`, checked before the model stage.

`check_relation_inputs` runs in `prepare` (on the CPU workers), so a post reaches the model stage either with its
pairs and entities fully validated or as an error record naming its line.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import TYPE_CHECKING, Any, Sequence

from mmib_cli.io.records import ErrorRecord, InputError, describe_value
from mmib_cli.annotation.postprocess import PairSelection, output_entity
from mmib_cli.settings import RelationInputs
from mmib_cli.text import Token

if TYPE_CHECKING:
    from mmib_cli.annotation.preprocess import Prepared


def check_relation_inputs(item: "Prepared", inputs: RelationInputs) -> "Prepared | ErrorRecord":
    """Attach the pairs a `relations` input asks about (given pairs, or pairs of its given entities).

    `inputs.entity_types`: the entity types the relation labels are defined over (empty: any label); a given entity
    labelled otherwise could never be related under the type constraints, so it is an input error, not a silent
    empty list.
    """
    try:
        given = item.post.raw.get("entities")
        if given is not None:
            item.given_entities = _given_entities(given, item.post.text)
        entities = list(item.given_entities or [])
        if not inputs.pair:
            item.pairs = input_pairs(item)
            entities += [entity for pair in item.pairs for entity in pair]
        words = WordIndex(item.tokens)
        for entity in entities:
            words.span(entity)
            _check_type(entity, inputs.entity_types)
    except InputError as exc:
        return ErrorRecord.from_exception(InputError(f"line {item.post.line}: {exc}"), id=item.post.id,
                                          line=item.post.line)
    item.relation_inputs_checked = True
    return item


class WordIndex:
    """Finds the words an entity covers in O(log n) (a post may have tens of thousands of words and entities)."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self.starts = [t.start for t in tokens]
        self.ends = [t.end for t in tokens]

    def span(self, entity: dict) -> tuple[int, int]:
        """Word indices `[a, b)` covered by an entity given by char offsets (`start`/`end`).

        Raises:
            InputError: the entity covers no word.
        """
        start, end = int(entity["start"]), int(entity["end"])
        first = bisect_right(self.ends, start)  # the first word ending after `start`
        stop = bisect_left(self.starts, end)  # the words starting before `end`
        if first >= stop:
            raise InputError(f"entity {entity.get('text', '')!r} [{start}, {end}) covers no word of the text")
        return first, stop


def _given_entities(given: Any, text: str) -> list[dict]:
    """The input's `entities` as output entities (`text`, `label`, `start`, `end`, `score`: 1.0 when not given)."""
    if not isinstance(given, list):
        raise InputError(f'"entities" must be a list of {{"start", "end", "label"}} objects, got '
                         f"{describe_value(given)}")
    entities = []
    for value in given:
        if not isinstance(value, dict):
            raise InputError(f"entities must be objects with start/end/label, got {describe_value(value)}")
        entity = _entity_from(value, text)
        if "label" not in entity:
            raise InputError(f'an entity needs a "label" (PER, LOC, ORG or MISC), got {describe_value(value)}')
        entities.append(output_entity(entity, entity["label"]))
    return entities


def _check_type(entity: dict, types: frozenset[str]) -> None:
    label = entity.get("label")
    if types and label is not None and label.upper() not in types:
        raise InputError(f"entity {entity['text']!r} is labelled {label[:40]!r}, not one of the types the relation "
                         f"labels use ({', '.join(sorted(types))}); map it, leave the label out, or pass "
                         "--no-type-constraints")


def bio_from_entities(tokens: Sequence[Token], entities: Sequence[dict]) -> list[str]:
    """BIO tags of the words of a post from entities given by char offsets (entities covering no word are left out)."""
    tags = ["O"] * len(tokens)
    words = WordIndex(tokens)
    for ent in entities:
        try:
            a, b = words.span(ent)
        except (InputError, KeyError, TypeError, ValueError):
            continue
        label = ent.get("label", "MISC")
        tags[a:b] = [f"B-{label}"] + [f"I-{label}"] * (b - a - 1)
    return tags


def input_pairs(prepared: "Prepared") -> list[tuple[dict, dict]]:
    """The pairs an input record asks about: `pairs` [{head, tail}] with char offsets, or MNRE `h`/`t` word spans.

    Raises:
        InputError: the record gives neither (without `--pair` there is nothing to classify), or a malformed pair.
    """
    raw, tokens, text = prepared.post.raw, prepared.tokens, prepared.post.text
    pairs: list[tuple[dict, dict]] = []
    if isinstance(raw.get("pairs"), list):
        for i, pair in enumerate(raw["pairs"]):
            if not isinstance(pair, dict) or not all(isinstance(pair.get(k), dict) for k in ("head", "tail")):
                raise InputError(f"pairs[{i}] must be "
                                 f"{{\"head\": {{...}}, \"tail\": {{...}}}}")
            pairs.append((_entity_from(pair["head"], text), _entity_from(pair["tail"], text)))
    elif isinstance(raw.get("h"), dict) and isinstance(raw.get("t"), dict):
        pairs.append((_entity_from_words(raw["h"], tokens, text), _entity_from_words(raw["t"], tokens, text)))
    else:
        raise InputError('no "pairs" (or MNRE "h"/"t") to classify; pass --pair to '
                         'classify every ordered pair of its entities (given as "entities", or found by NER)')
    return pairs


def given_pair_selection(pairs: Sequence[tuple[dict, dict]],
                         max_pairs: int) -> tuple[list[dict], PairSelection]:
    """Index the pairs an input gives: their distinct entities, and the first `max_pairs` distinct ordered pairs
    (0: all) in input order."""
    entities: list[dict] = []
    index: dict[tuple, int] = {}
    chosen: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for head, tail in pairs:
        ids = []
        for entity in (head, tail):
            key = (entity["start"], entity["end"], entity.get("label"))
            if key not in index:
                index[key] = len(entities)
                entities.append(entity)
            ids.append(index[key])
        pair = (ids[0], ids[1])
        if pair not in seen:
            seen.add(pair)
            chosen.append(pair)
    candidates = len(chosen)
    return entities, PairSelection(chosen[:max_pairs] if max_pairs else chosen, candidates)


def _entity_from(value: dict, text: str) -> dict:
    start, end = value.get("start"), value.get("end")
    if not all(_is_whole_number(v) for v in (start, end)):
        raise InputError(f"an entity needs whole-number start/end char offsets, got {describe_value(value)}")
    start, end = int(start), int(end)
    if not 0 <= start < end <= len(text):
        raise InputError(f"entity offsets [{start}, {end}) are outside the text ({len(text)} characters)")
    entity = {"text": text[start:end], "start": start, "end": end}
    if value.get("label"):
        entity["label"] = str(value["label"])
    score = value.get("score")
    if isinstance(score, (int, float)) and not isinstance(score, bool) and 0.0 <= score <= 1.0:
        entity["score"] = float(score)
    return entity


def _is_whole_number(value: Any) -> bool:
    """An int, or a float without a fraction (3.0); never a bool or a string."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _entity_from_words(value: dict, tokens: Sequence[Token], text: str) -> dict:
    pos = value.get("pos")
    if not (isinstance(pos, list) and len(pos) == 2 and all(type(p) is int for p in pos)
            and 0 <= pos[0] < pos[1] <= len(tokens)):
        raise InputError(f"entity {value!r}: 'pos' must be [start, end) word indices within the {len(tokens)} words")
    start, end = tokens[pos[0]].start, tokens[pos[1] - 1].end
    entity = {"text": text[start:end], "start": start, "end": end}
    if value.get("label"):
        entity["label"] = str(value["label"])
    return entity
