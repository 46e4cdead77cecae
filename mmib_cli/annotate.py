"""The library API: `Annotator.from_pretrained(model).annotate(records)` yields output dicts.

Work per post is split in two stages so the CLI pipeline can overlap them: `prepare` (CPU: validate, split words,
decode the image; runs in worker processes) and `process` (tokenise a whole chunk at once, batched forward passes
sorted by length, decode, post-process; runs next to the model).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import torch

from mmib_cli.checkpoint.model_io import LoadedModel
from mmib_cli.choices import (DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE, DEFAULT_DEVICE, DEFAULT_MAX_TOKENS,
                              DEFAULT_MODEL, DType, Mode, OnMissingImage)
from mmib_cli.errors import InvalidCheckpoint, InvalidInput, MMIBError
from mmib_cli.inference import NERPrediction, predict_ner, predict_re
from mmib_cli.io.records import (ErrorRecord, InputError, InputPost, SkippedRecord, describe_value, make_output,
                                 parse_post)
from mmib_cli.postprocess import (PairSelection, bio_to_entities, default_min_score, output_entity,
                                  relation_entity_types, relations_from_scores, select_pairs)
from mmib_cli.runs.plan import PrepareSettings, RelationSettings
from mmib_cli.text import Token, tokenize

logger = logging.getLogger(__name__)

PAIR_BLOCK = 512
"""Entity pairs featurised and scored at a time: a chunk's pairs are never all held as windows at once."""


@dataclass
class Prepared:
    """A validated post ready for the model: its words with offsets and, when used, its decoded image."""

    post: InputPost
    tokens: list[Token]
    pixels: torch.Tensor | None = None  # (3, S, S) uint8 crop, normalised per batch
    image_note: str | None = None  # why a given image was not used
    pairs: list[tuple[dict, dict]] | None = None  # relations mode: the (head, tail) entities the input gives
    given_entities: list[dict] | None = None  # relations: the input's `entities`, checked, as output entities


Skipped = SkippedRecord
"""A post left out on purpose (a blank line, `--on-missing-image skip`): written as a `skipped` line, not an error."""


def word_tokens(post: InputPost) -> list[Token]:
    """Words of a post with char offsets: the built-in tokenizer, or the input's `tokens` located in the text."""
    if post.tokens is None:
        return tokenize(post.text)
    tokens, cursor = [], 0
    for word in post.tokens:
        start = post.text.find(word, cursor)
        if start < 0:
            raise InputError(f"line {post.line}: token {word!r} not found in the text after offset {cursor}")
        tokens.append(Token(word, start, start + len(word)))
        cursor = start + len(word)
    return tokens


def prepare(line: int, obj: Any, settings: PrepareSettings) -> Prepared | Skipped | ErrorRecord:
    """Validate one parsed line, split its words and decode its image (never raises for bad input).

    Returns:
        The prepared post, a `Skipped` marker (`--on-missing-image skip`), or an error record.
    """
    from mmib_cli.io.records import post_id

    if isinstance(obj, (ErrorRecord, SkippedRecord)):
        return obj
    try:
        post = parse_post(obj, line, id_field=settings.id_field, text_field=settings.text_field,
                          image_field=settings.image_field)
        _check_encodable(post)
        prepared = Prepared(post, word_tokens(post))
    except InputError as exc:
        return ErrorRecord.from_exception(exc, id=post_id(obj, line, id_field=settings.id_field), line=line)
    except Exception as exc:  # noqa: BLE001 - one bad record must never stop a run
        logger.debug("line %d: unexpected %s while reading the record", line, type(exc).__name__, exc_info=True)
        return ErrorRecord(post_id(obj, line, id_field=settings.id_field), line, "InvalidInput",
                           f"line {line}: cannot read the record ({type(exc).__name__}: {exc})")
    unread = settings.image_size is None and settings.on_missing_image is OnMissingImage.TEXT_ONLY
    if post.image is None or unread:
        return prepared  # no image, or one the model would not read and whose state changes nothing
    return _attach_image(prepared, settings)


def _check_encodable(post: InputPost) -> None:
    """Reject text (or given tokens) holding unpaired UTF-16 surrogates (`\\ud800` escapes): no tokenizer takes them."""
    for what, value in [("text", post.text), *(("tokens", w) for w in post.tokens or ())]:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(f"line {post.line}: {what} holds an unpaired surrogate {value[exc.start]!r} at offset "
                             f"{exc.start} (a lone \\ud800-\\udfff escape); fix the input encoding") from None


def _attach_image(prepared: Prepared, settings: PrepareSettings) -> Prepared | Skipped | ErrorRecord:
    """Decode the post's image into `prepared.pixels` (only check it when the model reads no pixels), or apply the
    `on_missing_image` policy."""
    from mmib_cli.io.images import DEFAULT_MAX_IMAGE_BYTES, ImageError, check_image, load_image, resolve_image_path

    post = prepared.post
    max_bytes = settings.max_image_bytes or DEFAULT_MAX_IMAGE_BYTES
    try:
        path = resolve_image_path(post.image, base_dir=settings.base_dir, image_root=settings.image_root,
                                  confine=settings.confine_images)
        if settings.image_size is None:
            check_image(path, max_bytes=max_bytes)
        else:  # uint8 until its batch is built (4x less memory per queued photo); normalised in `Annotator._pixels`
            prepared.pixels = load_image(path, image_size=settings.image_size, mean=None, std=None,
                                         max_bytes=max_bytes)
    except Exception as exc:  # noqa: BLE001 - ImageError, or anything odd a path or decoder raises
        if not isinstance(exc, ImageError):
            exc = ImageError(f"image {post.image!r} cannot be used ({type(exc).__name__}: {exc})")
        kind = getattr(exc, "error_type", "ImageUnreadable")
        if kind == "DecompressionBomb" or settings.on_missing_image is OnMissingImage.ERROR:
            return ErrorRecord.from_exception(exc, id=post.id, line=post.line)
        if settings.on_missing_image is OnMissingImage.SKIP:
            return Skipped(post.id, post.line, f"{kind}: {exc}")
        prepared.image_note = f"{kind}: {exc}"
    return prepared


class Annotator:
    """Annotate posts with entities (and relations) using an MMIB checkpoint (NER and/or RE models).

    Example:
        >>> annotator = Annotator.from_pretrained("mmib-default")
        >>> next(annotator.annotate([{"text": "Kawhi Leonard joins the Clippers"}]))["entities"]
    """

    def __init__(self, ner: LoadedModel | None, re: LoadedModel | None, *, model_label: str,
                 batch_size: int = DEFAULT_BATCH_SIZE, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
        if ner is None and re is None:
            raise InvalidCheckpoint("an Annotator needs at least one of an NER and an RE model")
        self.ner, self.re = ner, re
        self.model_label = model_label
        self.batch_size = batch_size
        self.max_tokens = max_tokens

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, *, revision: str | None = None,
                        device: str = DEFAULT_DEVICE, dtype: str | DType = DType.AUTO, cache_dir: str | None = None,
                        token: str | None = None, online: bool | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                        max_tokens: int = DEFAULT_MAX_TOKENS) -> "Annotator":
        """Load a registry name, a checkpoint directory or a hub id `org/name[@rev]` (see `mmib download`)."""
        from mmib_cli.checkpoint.loading import load_bundle

        bundle = load_bundle(model, revision=revision, device=device, dtype=dtype, cache_dir=cache_dir, token=token,
                             online=online)
        return cls(bundle.ner, bundle.re, model_label=bundle.label, batch_size=batch_size, max_tokens=max_tokens)

    @property
    def device(self) -> torch.device:
        """The device the models run on."""
        loaded = self.ner or self.re
        return next(loaded.model.parameters()).device

    @property
    def image_models(self) -> list[LoadedModel]:
        """The loaded models that take images (trained with images and built with a backbone)."""
        return [m for m in (self.ner, self.re) if m is not None and m.image_info is not None]

    def prepare_settings(self, **kwargs: Any) -> PrepareSettings:
        """PrepareSettings matching this annotator's image preprocessing (no decoding if no model uses images)."""
        settings = PrepareSettings(**kwargs)
        if self.image_models:
            settings.image_size = self.image_models[0].image_info.image_size
        return settings

    # -- library entry points ---------------------------------------------------------------------------------
    def annotate(self, records: Iterable[dict[str, Any]], *, relations: bool = False,
                 relation_settings: RelationSettings | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 **prepare_kwargs: Any) -> Iterator[dict[str, Any]]:
        """Yield one output dict per input record, in order (error records for bad ones)."""
        mode = Mode.ANNOTATE_RELATIONS if relations else Mode.ANNOTATE
        yield from self._stream(records, mode, relation_settings, chunk_size, prepare_kwargs)

    def relations(self, records: Iterable[dict[str, Any]], *, relation_settings: RelationSettings | None = None,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, **prepare_kwargs: Any) -> Iterator[dict[str, Any]]:
        """Yield relation records for the pairs each input gives (or every entity pair with `pair=True`)."""
        settings = relation_settings or RelationSettings(pair=False)
        yield from self._stream(records, Mode.RELATIONS, settings, chunk_size, prepare_kwargs)

    def annotate_text(self, text: str, image: str | None = None, *, relations: bool = False) -> dict[str, Any]:
        """Annotate one post (a one-line wrapper around `annotate`)."""
        return next(self.annotate([{"text": text, "image": image}], relations=relations))

    def _stream(self, records: Iterable[dict[str, Any]], mode: Mode, relation_settings: RelationSettings | None,
                chunk_size: int, prepare_kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        settings = self.prepare_settings(**prepare_kwargs)
        chunk: list[Prepared | Skipped | ErrorRecord] = []
        for line, obj in enumerate(records, 1):
            chunk.append(prepare(line, obj, settings))
            if len(chunk) >= chunk_size:
                yield from self.process(chunk, mode, relation_settings)
                chunk = []
        if chunk:
            yield from self.process(chunk, mode, relation_settings)

    # -- the model stage -------------------------------------------------------------------------------------
    def process(self, chunk: Sequence[Prepared | Skipped | ErrorRecord], mode: Mode | str,
                relation_settings: RelationSettings | None = None) -> list[dict[str, Any]]:
        """Annotate a chunk of prepared posts; returns output dicts in chunk order.

        `mode` is a `Mode` (or its value: `annotate`, `annotate+relations`, `relations`).

        A failure other than a run-level `MMIBError` (a tokenizer or model error caused by one odd post, out of
        memory...) does not lose the chunk: its posts are retried one at a time, and a post that still fails becomes an
        `AnnotationFailed` error record.

        Raises:
            InvalidCheckpoint: the mode needs a task model (ner/re) this annotator lacks.
            ValueError: `mode` is not a `Mode` value.
        """
        mode = Mode.parse(mode, what="mode")
        try:
            return self._process_chunk(chunk, mode, relation_settings)
        except Exception as exc:  # noqa: BLE001 - one bad record must never stop a run
            if _is_fatal(exc):
                raise
            if len(chunk) == 1:
                return [_failure_record(chunk[0], exc)]
            logger.warning("a chunk of %d posts failed (%s: %s); retrying its posts one by one", len(chunk),
                           type(exc).__name__, exc)
        out: list[dict[str, Any]] = []
        for item in chunk:
            try:
                out.extend(self._process_chunk([item], mode, relation_settings))
            except Exception as exc:  # noqa: BLE001
                if _is_fatal(exc):
                    raise
                out.append(_failure_record(item, exc))
        return out

    def _process_chunk(self, chunk: Sequence[Prepared | Skipped | ErrorRecord], mode: Mode,
                       relation_settings: RelationSettings | None) -> list[dict[str, Any]]:
        settings = relation_settings or RelationSettings()
        if mode is Mode.RELATIONS:
            types = relation_entity_types(self.re.model.config.labels) if self.re and settings.type_constraints \
                else frozenset()
            chunk = [_with_input_pairs(item, settings, types) if isinstance(item, Prepared) else item
                     for item in chunk]
        posts = [p for p in chunk if isinstance(p, Prepared)]
        want_relations = mode.wants_relations
        if want_relations and self.re is None:
            raise InvalidCheckpoint(f"model {self.model_label} has no relation (re) model")
        entities: dict[int, list[dict[str, Any]]] = {}
        bio: dict[int, list[str]] = {}
        need_ner = [p for p in posts
                    if mode is not Mode.RELATIONS or (settings.pair and p.post.raw.get("entities") is None)]
        if need_ner and self.ner is None:
            if mode is not Mode.RELATIONS:
                raise InvalidCheckpoint(f"model {self.model_label} has no entity (ner) model")
            chunk = [_no_entities(item, self.model_label) if any(item is p for p in need_ner) else item
                     for item in chunk]
            posts, need_ner = [p for p in chunk if isinstance(p, Prepared)], []
        if need_ner:
            self._run_ner(need_ner, entities, bio)
        pairs_out: dict[int, tuple[list[dict[str, Any]], PairSelection]] = {}
        if want_relations:
            pairs_out = self._run_re(posts, entities, settings)
        out: list[dict[str, Any]] = []
        for item in chunk:
            if isinstance(item, ErrorRecord):
                out.append(item.to_json())
            elif isinstance(item, Skipped):
                out.append(item.to_json())
            else:
                key = id(item)
                ents = entities.get(key, item.given_entities or [])
                record = make_output(item.post, tokens=item.tokens,
                                     bio=bio.get(key, ["O"] * len(item.tokens)) if key in bio or not want_relations
                                     else _bio_from_entities(item.tokens, ents),
                                     entities=ents, image_used=self._image_used(item),
                                     model=self.model_label,
                                     relations=pairs_out[key][0] if want_relations else None)
                if want_relations and pairs_out[key][1].capped:
                    selection = pairs_out[key][1]
                    record["relations_capped"] = {"pairs": selection.candidates, "scored": len(selection.pairs)}
                if item.image_note:
                    record["image_error"] = item.image_note
                out.append(record)
        return out

    def _image_used(self, item: Prepared) -> bool:
        return item.pixels is not None and bool(self.image_models)

    def _pixels(self, posts: Sequence[Prepared],
                loaded: LoadedModel) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        from mmib_cli.io.images import normalize_pixels, stack_images

        info = loaded.image_info
        if info is None:
            return None, None
        # one image at a time: an image's floats never depend on the other posts of the chunk
        images = [normalize_pixels(p.pixels, mean=info.mean, std=info.std)
                  if p.pixels is not None and p.pixels.dtype == torch.uint8 else p.pixels for p in posts]
        pixels, present = stack_images(images, info.image_size)
        if pixels is None:
            return None, None
        return pixels.to(next(loaded.model.parameters()).dtype), present

    def _ner_predictions(self, posts: Sequence[Prepared]) -> list[NERPrediction]:
        """Tags and tag probabilities of each post (each a function of its post alone, whatever the batching)."""
        loaded = self.ner
        windows = loaded.featurizer.encode_ner([[t.text for t in p.tokens] for p in posts])
        for k, ws in enumerate(windows):
            for w in ws:
                w.post = k
        pixels, present = self._pixels(posts, loaded)
        return predict_ner(loaded, windows, batch_size=self.batch_size, max_tokens=self.max_tokens,
                           pixel_values=pixels, image_present=present)

    def _run_ner(self, posts: Sequence[Prepared], entities: dict[int, list], bio: dict[int, list[str]]) -> None:
        for post, pred in zip(posts, self._ner_predictions(posts)):
            bio[id(post)] = pred.tags
            entities[id(post)] = bio_to_entities(post.tokens, pred.tags, post.post.text, pred.tag_scores)

    def _run_re(self, posts: Sequence[Prepared], entities: dict[int, list],
                settings: RelationSettings) -> dict[int, tuple[list[dict[str, Any]], PairSelection]]:
        """Relations of each post: select its pairs (capped), score them block by block, decode them.

        Returns:
            Per post (by `id`): its relation records and the pair selection (which says whether it was capped).
        """
        loaded = self.re
        config = loaded.model.config
        plans = [self._relation_pairs(post, entities.get(id(post)) or [], config.labels, settings) for post in posts]
        rows = self._score_pairs(posts, plans, loaded)
        min_score = settings.min_score
        if min_score is None:
            min_score = default_min_score(config)
        result: dict[int, tuple[list[dict[str, Any]], PairSelection]] = {}
        cursor = 0
        for post, (ents, selection) in zip(posts, plans):
            post_rows = rows[cursor: cursor + len(selection.pairs)]
            cursor += len(selection.pairs)
            relations = relations_from_scores(ents, selection.pairs, post_rows, config.labels,
                                              keep_none=settings.keep_none, type_constraints=settings.type_constraints,
                                              temperature=config.relation_temperature, min_score=min_score)
            result[id(post)] = (relations, selection)
        return result

    @staticmethod
    def _relation_pairs(post: Prepared, found: list[dict[str, Any]], labels: Sequence[str],
                        settings: RelationSettings) -> tuple[list[dict[str, Any]], PairSelection]:
        """The entities of a post and the ordered pairs of them to score (given pairs, or selected pairs)."""
        if post.pairs is not None:
            return given_pair_selection(post.pairs, settings.max_pairs)
        ents = post.given_entities if post.given_entities is not None else found
        return ents, select_pairs(ents, labels, type_constraints=settings.type_constraints,
                                  max_pairs=settings.max_pairs)

    def _score_pairs(self, posts: Sequence[Prepared], plans: Sequence[tuple[list[dict], PairSelection]],
                     loaded: LoadedModel) -> list[list[float]]:
        """Relation probabilities of every planned pair, in plan order, scored `PAIR_BLOCK` pairs at a time so
        memory stays bounded however many pairs a chunk holds."""
        items: list[tuple[int, tuple[int, int], tuple[int, int]]] = []
        words: list[list[str]] = []
        for k, (post, (ents, selection)) in enumerate(zip(posts, plans)):
            words.append([t.text for t in post.tokens])
            spans = {}
            for i, j in selection.pairs:
                for n in (i, j):
                    if n not in spans:
                        spans[n] = _word_span(post.tokens, ents[n])
                items.append((k, spans[i], spans[j]))
        rows: list[list[float]] = []
        if not items:
            return rows
        pixels, present = self._pixels(posts, loaded)
        for start in range(0, len(items), PAIR_BLOCK):
            block = items[start: start + PAIR_BLOCK]
            windows = loaded.featurizer.encode_re_batch([(words[k], head, tail) for k, head, tail in block])
            for w, (k, _, _) in zip(windows, block):
                w.post = k
            probs = predict_re(loaded, windows, batch_size=self.batch_size, max_tokens=self.max_tokens,
                               pixel_values=pixels, image_present=present)
            rows.extend(probs.tolist())
        return rows


def _is_fatal(exc: BaseException) -> bool:
    """Errors about the run itself (missing task model...), as opposed to one post's input."""
    return isinstance(exc, MMIBError) and not isinstance(exc, InvalidInput)


def _failure_record(item: Prepared | Skipped | ErrorRecord, exc: BaseException) -> dict[str, Any]:
    """The output line of a post whose annotation raised an unexpected exception."""
    if not isinstance(item, Prepared):
        return item.to_json()
    logger.warning("line %d: annotation failed (%s: %s)", item.post.line, type(exc).__name__, exc,
                   exc_info=logger.isEnabledFor(logging.DEBUG))
    if isinstance(exc, InvalidInput):
        return ErrorRecord.from_exception(exc, id=item.post.id, line=item.post.line).to_json()
    return ErrorRecord(item.post.id, item.post.line, "AnnotationFailed",
                       f"line {item.post.line}: annotation failed ({type(exc).__name__}: {exc})").to_json()


def _no_entities(item: Prepared | Skipped | ErrorRecord, model_label: str) -> Prepared | Skipped | ErrorRecord:
    """`relations --pair` on a post without `entities` when the model has no NER part to find them."""
    if not isinstance(item, Prepared):
        return item
    return ErrorRecord(item.post.id, item.post.line, "InvalidInput",
                       f"line {item.post.line}: no \"entities\" to pair, and model {model_label} has no entity (ner) "
                       "model to find them; give entities or use a model with an ner part")


def _with_input_pairs(item: Prepared, settings: RelationSettings, types: frozenset[str]) -> Prepared | ErrorRecord:
    """Attach the pairs a `relations` input asks about (given pairs, or pairs of its given entities).

    `types`: the entity types the relation labels are defined over (empty: any label); a given entity labelled
    otherwise could never be related under the type constraints, so it is an input error, not a silent empty list.
    """
    try:
        given = item.post.raw.get("entities")
        if given is not None:
            item.given_entities = _given_entities(given, item.post.text)
        entities = list(item.given_entities or [])
        if not settings.pair:
            item.pairs = input_pairs(item)
            entities += [entity for pair in item.pairs for entity in pair]
        for entity in entities:
            _word_span(item.tokens, entity)
            _check_type(entity, types)
    except InputError as exc:
        return ErrorRecord.from_exception(InputError(f"line {item.post.line}: {exc}"), id=item.post.id,
                                          line=item.post.line)
    return item


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


def _word_span(tokens: Sequence[Token], entity: dict) -> tuple[int, int]:
    """Word indices `[a, b)` covered by an entity given by char offsets (`start`/`end`)."""
    start, end = int(entity["start"]), int(entity["end"])
    inside = [i for i, t in enumerate(tokens) if t.start < end and t.end > start]
    if not inside:
        raise InputError(f"entity {entity.get('text', '')!r} [{start}, {end}) covers no word of the text")
    return inside[0], inside[-1] + 1


def _bio_from_entities(tokens: Sequence[Token], entities: Sequence[dict]) -> list[str]:
    tags = ["O"] * len(tokens)
    for ent in entities:
        try:
            a, b = _word_span(tokens, ent)
        except (InputError, KeyError, TypeError, ValueError):
            continue
        label = ent.get("label", "MISC")
        tags[a:b] = [f"B-{label}"] + [f"I-{label}"] * (b - a - 1)
    return tags


def input_pairs(prepared: Prepared) -> list[tuple[dict, dict]]:
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
        raise InputError(f'no "pairs" (or MNRE "h"/"t") to classify; pass --pair to '
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
