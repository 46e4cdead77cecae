"""The model stage: posts flow through NER windows, the CRF and relation windows, and come out as records in order.

An `AnnotationSession` holds the posts in flight, each as one `PostFlow` that carries its own results. Windows of
all posts share fixed-shape calls (`inference.WindowRunner`): a bucket that is not full at the end of a chunk waits
for the next chunk's windows instead of running mostly empty, and records still leave in input order. A post's
record is a function of that post alone, however the posts are fed.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from mmib_cli.choices import Mode
from mmib_cli.errors import InvalidCheckpoint, InvalidInput, MMIBError
from mmib_cli.features import Window, merge_window_emissions
from mmib_cli.annotation.forward import CallFailed, WindowRunner, decode_posts, encode_photos
from mmib_cli.io.records import ErrorRecord, SkippedRecord, make_output
from mmib_cli.annotation.postprocess import (PairSelection, bio_to_entities, default_min_score,
                                             relations_from_scores, select_pairs)
from mmib_cli.annotation.preprocess import Prepared
from mmib_cli.annotation.relation_inputs import WordIndex, bio_from_entities, check_relation_inputs, given_pair_selection
from mmib_cli.settings import RelationSettings

if TYPE_CHECKING:
    from mmib_cli.checkpoint.assemble import LoadedModel

logger = logging.getLogger(__name__)

DEFAULT_MAX_WAIT = 1024
"""Posts fed after a window was queued before its bucket runs partly empty: bounds how long a post waits for call
mates (and so the posts held in flight and the work an interrupted run redoes)."""


@dataclass(eq=False)
class PostFlow:
    """One post in the model stage: its input, what it still waits for, and its results so far."""

    item: Prepared | SkippedRecord | ErrorRecord
    record: dict[str, Any] | None = None  # set once the post is done
    waiting: int = 0  # forward rows queued and not yet back
    ner_windows: list[Window] = field(default_factory=list)
    ner_rows: list[torch.Tensor | None] = field(default_factory=list)
    tags: list[str] | None = None  # None: no NER ran
    entities: list[dict[str, Any]] | None = None
    pair_entities: list[dict[str, Any]] = field(default_factory=list)
    selection: PairSelection | None = None
    pair_probs: list[torch.Tensor | None] = field(default_factory=list)
    image_used: bool = False

    @property
    def post(self) -> Prepared:
        assert isinstance(self.item, Prepared)
        return self.item

    def row_setter(self, rows: list[torch.Tensor | None], index: int,
                   then: Callable[["PostFlow"], None]) -> Callable[[torch.Tensor], None]:
        """A `WindowRunner` callback: stores row `index`, and calls `then(self)` when no row is left to wait for."""
        def done(result: torch.Tensor) -> None:
            rows[index] = result
            self.waiting -= 1
            if self.waiting == 0:
                then(self)
        return done


class AnnotationSession:
    """Annotates a stream of prepared posts fed chunk by chunk; `feed` and `finish` return records in input order.

    Args:
        annotator: the loaded models (`Annotator`).
        mode: what to produce.
        relation_settings: how relations are chosen and decoded (`RelationSettings()` when None).
        max_wait: posts fed after a window before its call runs partly filled (0: every `feed` returns the
            records of all the posts fed so far).
        isolated: a session that runs one post alone after a failed call (a failure becomes its error record).

    Raises:
        InvalidCheckpoint: the mode needs a task model (ner/re) the annotator lacks.
    """

    def __init__(self, annotator: Any, mode: Mode, relation_settings: RelationSettings | None = None, *,
                 max_wait: int = DEFAULT_MAX_WAIT, isolated: bool = False) -> None:
        self.annotator, self.mode = annotator, mode
        self.settings = relation_settings or RelationSettings()
        self.max_wait, self.isolated = max(0, max_wait), isolated
        self.fed = 0  # posts fed so far: the clock windows wait by
        if mode.wants_relations and annotator.re is None:
            raise InvalidCheckpoint(f"model {annotator.model_label} has no relation (re) model")
        if mode is not Mode.RELATIONS and annotator.ner is None:
            raise InvalidCheckpoint(f"model {annotator.model_label} has no entity (ner) model")
        self.ner = self._runner(annotator.ner, "ner")
        self.re = self._runner(annotator.re, "re")
        self.flows: deque[PostFlow] = deque()
        self.tagged: list[PostFlow] = []  # NER rows all back, waiting for the CRF

    @staticmethod
    def _runner(loaded: LoadedModel | None, task: str) -> WindowRunner | None:
        return None if loaded is None else WindowRunner(loaded.model, loaded.featurizer, task)

    # -- the stream -------------------------------------------------------------------------------------------
    def feed(self, chunk: Sequence[Prepared | SkippedRecord | ErrorRecord]) -> list[dict[str, Any]]:
        """Take a chunk of prepared posts; return the records now complete at the head of the stream."""
        image_models = bool(self.annotator.image_models)
        flows = [PostFlow(item, image_used=image_models and isinstance(item, Prepared) and item.pixels is not None)
                 for item in chunk]
        self.flows.extend(flows)
        self.fed += len(flows)
        self._guarded(self._start, flows)
        if self.max_wait:
            self._advance(before=self.fed - self.max_wait)
        else:
            self._drain()
        return self._emit()

    def finish(self) -> list[dict[str, Any]]:
        """Run everything still queued; return the remaining records."""
        self._drain()
        return self._emit()

    def _drain(self) -> None:
        while any(flow.record is None for flow in self.flows):
            self._advance(before=None)
            if not self.tagged and not any(r is not None and r.pending for r in (self.ner, self.re)):
                self._lost()

    def _lost(self) -> None:
        """Never hang: a post that waits for nothing queued gets an error record (a bug, logged as such)."""
        for flow in self.flows:
            if flow.record is None:
                logger.error("line %s: the post was lost in the model stage (a bug in mmib; please report it)",
                             getattr(getattr(flow.item, "post", None), "line", "?"))
                flow.record = failure_record(flow.item, RuntimeError("the post was lost in the model stage"))

    def _emit(self) -> list[dict[str, Any]]:
        out = []
        while self.flows and self.flows[0].record is not None:
            out.append(self.flows.popleft().record)
        return out

    def _advance(self, *, before: int | None) -> None:
        """Run, stage by stage, the full calls and those whose oldest window was queued before the clock read
        `before` (None: every call)."""
        for runner, then in ((self.ner, self._decode_tagged), (self.re, None)):
            if runner is None:
                continue
            try:
                runner.run_full()
                if before is None:
                    runner.flush()
                else:
                    runner.run_stale(before)
            except CallFailed as failure:
                if _is_fatal(failure.cause):
                    raise failure.cause from None
                self._isolate([owner for owner in failure.owners if isinstance(owner, PostFlow)], failure.cause)
                return self._advance(before=before)
            if then is not None:
                then()

    # -- stages -----------------------------------------------------------------------------------------------
    def _start(self, flows: Sequence[PostFlow]) -> None:
        """Error/skipped lines are done at once; the rest are featurised and queued for NER or relations."""
        need_ner: list[PostFlow] = []
        direct: list[PostFlow] = []  # relations on the pairs or entities the post gives
        for flow in flows:
            if not isinstance(flow.item, Prepared):
                flow.record = flow.item.to_json()
                continue
            if self.mode is Mode.RELATIONS:
                self._check_relation_inputs(flow)
                if flow.record is not None:
                    continue
            (need_ner if self._needs_ner(flow) else direct).append(flow)
        if direct:
            self._start_relations(direct)
        if need_ner:
            self._queue_ner(need_ner)

    def _check_relation_inputs(self, flow: PostFlow) -> None:
        post = flow.post
        if not post.relation_inputs_checked:  # prepared without the run's relation inputs (library callers)
            checked = check_relation_inputs(post, self.annotator.relation_inputs(self.settings))
            if isinstance(checked, ErrorRecord):
                flow.record = checked.to_json()
                return
        if self._needs_ner(flow) and self.annotator.ner is None:
            flow.record = ErrorRecord(
                post.post.id, post.post.line, "InvalidInput",
                f"line {post.post.line}: no \"entities\" to pair, and model {self.annotator.model_label} has no "
                "entity (ner) model to find them; give entities or use a model with an ner part").to_json()

    def _needs_ner(self, flow: PostFlow) -> bool:
        return self.mode is not Mode.RELATIONS or (self.settings.pair and flow.post.post.raw.get("entities") is None)

    def _queue_ner(self, flows: Sequence[PostFlow]) -> None:
        loaded = self.annotator.ner
        windows = loaded.featurizer.encode_ner([[t.text for t in f.post.tokens] for f in flows])
        visual = self._visual_tokens(flows, loaded, last_use=not self.mode.wants_relations)
        for flow, post_windows, image in zip(flows, windows, visual):
            flow.ner_windows, flow.ner_rows = post_windows, [None] * len(post_windows)
            flow.waiting = len(post_windows)
            for j, window in enumerate(post_windows):
                self.ner.add(window, flow.row_setter(flow.ner_rows, j, self._tagged), image=image, owner=flow,
                             since=self.fed)

    def _visual_tokens(self, flows: Sequence[PostFlow], loaded: LoadedModel, *,
                       last_use: bool) -> list[torch.Tensor | None]:
        """Each post's visual tokens for `loaded` (None without a photo or when the model reads none); with
        `last_use`, the posts' decoded photos are dropped (their tokens are all that is needed from them)."""
        from mmib_cli.io.images import normalize_pixels

        info = loaded.image_info
        photos = []
        for flow in flows:
            pixels = flow.post.pixels
            if last_use:
                flow.post.pixels = None
            if info is None:
                photos.append(None)
                continue
            if pixels is not None and pixels.dtype == torch.uint8:
                pixels = normalize_pixels(pixels, mean=info.mean, std=info.std)
            photos.append(pixels)
        return encode_photos(loaded.model, photos)

    def _tagged(self, flow: PostFlow) -> None:
        self.tagged.append(flow)

    def _decode_tagged(self) -> None:
        """CRF-decode the posts whose NER rows are all back, then go on to relations or the record."""
        flows, self.tagged = self.tagged, []
        if flows:
            self._guarded(self._decode, flows)

    def _decode(self, flows: Sequence[PostFlow]) -> None:
        merged = [merge_window_emissions(f.ner_windows, f.ner_rows) for f in flows]
        predictions = decode_posts(self.annotator.ner.model, merged)
        for flow, prediction in zip(flows, predictions):
            post = flow.post
            flow.tags = prediction.tags
            flow.entities = bio_to_entities(post.tokens, prediction.tags, post.post.text, prediction.tag_scores)
            flow.ner_rows = []
            if not self.mode.wants_relations:
                self._finish(flow)
        if self.mode.wants_relations:
            self._start_relations(flows)

    def _start_relations(self, flows: Sequence[PostFlow]) -> None:
        """Select each post's pairs and queue one relation window per pair (a post without pairs is done)."""
        loaded = self.annotator.re
        with_pairs = []
        for flow in flows:
            post = flow.post
            if post.pairs is not None:
                flow.pair_entities, flow.selection = given_pair_selection(post.pairs, self.settings.max_pairs)
            else:
                flow.pair_entities = post.given_entities if post.given_entities is not None else (flow.entities or [])
                flow.selection = select_pairs(flow.pair_entities, loaded.model.config.labels,
                                              type_constraints=self.settings.type_constraints,
                                              max_pairs=self.settings.max_pairs)
            if flow.selection.pairs:
                with_pairs.append(flow)
            else:
                self._finish(flow)
        for flow, image in zip(with_pairs, self._visual_tokens(with_pairs, loaded, last_use=True)):
            post = flow.post
            words = WordIndex(post.tokens)
            spans = [words.span(entity) for entity in flow.pair_entities]
            windows = loaded.featurizer.encode_re_pairs([t.text for t in post.tokens],
                                                        [(spans[i], spans[j]) for i, j in flow.selection.pairs])
            flow.pair_probs, flow.waiting = [None] * len(windows), len(windows)
            for k, window in enumerate(windows):
                self.re.add(window, flow.row_setter(flow.pair_probs, k, self._finished_relations), image=image,
                            owner=flow, since=self.fed)

    def _finished_relations(self, flow: PostFlow) -> None:
        self._guarded(lambda flows: self._finish(flows[0]), [flow])

    def _finish(self, flow: PostFlow) -> None:
        """Assemble the post's record from its own results."""
        post = flow.post
        relations = None
        if self.mode.wants_relations:
            config = self.annotator.re.model.config
            min_score = self.settings.min_score if self.settings.min_score is not None else default_min_score(config)
            relations = relations_from_scores(flow.pair_entities, flow.selection.pairs,
                                              [p.tolist() for p in flow.pair_probs], config.labels,
                                              keep_none=self.settings.keep_none,
                                              type_constraints=self.settings.type_constraints,
                                              temperature=config.relation_temperature, min_score=min_score)
        entities = flow.entities if flow.entities is not None else (post.given_entities or [])
        if flow.tags is not None:
            bio = flow.tags
        elif self.mode.wants_relations:
            bio = bio_from_entities(post.tokens, entities)
        else:
            bio = ["O"] * len(post.tokens)
        record = make_output(post.post, tokens=post.tokens, bio=bio, entities=entities,
                             image_used=flow.image_used,
                             model=self.annotator.model_label, relations=relations)
        if relations is not None and flow.selection.capped:
            record["relations_capped"] = {"pairs": flow.selection.candidates, "scored": len(flow.selection.pairs)}
        if post.image_note:
            record["image_error"] = post.image_note
        flow.record = record
        flow.pair_probs, flow.ner_windows = [], []

    # -- failures ---------------------------------------------------------------------------------------------
    def _guarded(self, stage: Callable[[Sequence[PostFlow]], None], flows: Sequence[PostFlow]) -> None:
        """Run a stage on some posts; if it raises for a reason other than the run itself, isolate those posts."""
        try:
            stage(flows)
        except Exception as exc:  # noqa: BLE001 - one bad post must never stop a run
            if _is_fatal(exc):
                raise
            self._isolate([f for f in flows if f.record is None], exc)

    def _isolate(self, flows: Sequence[PostFlow], cause: BaseException) -> None:
        """Run each of `flows` again on its own (same shapes, so the same bits); a post that fails alone gets an
        `AnnotationFailed` record."""
        owners = set(flows)
        for runner in (self.ner, self.re):
            if runner is not None:
                runner.discard(owners)
        self.tagged = [f for f in self.tagged if f not in owners]
        if len(flows) > 1 or not self.isolated:
            logger.warning("a model call for %d posts failed (%s: %s); running them one by one", len(flows),
                           type(cause).__name__, cause)
        for flow in flows:
            if self.isolated:
                flow.record = failure_record(flow.item, cause)
                continue
            alone = AnnotationSession(self.annotator, self.mode, self.settings, isolated=True)
            try:
                records = alone.feed([flow.item]) + alone.finish()
                flow.record = records[0]
            except Exception as exc:  # noqa: BLE001
                if _is_fatal(exc):
                    raise
                flow.record = failure_record(flow.item, exc)


def _is_fatal(exc: BaseException) -> bool:
    """Errors about the run itself (missing task model...), as opposed to one post's input."""
    return isinstance(exc, MMIBError) and not isinstance(exc, InvalidInput)


def failure_record(item: Prepared | SkippedRecord | ErrorRecord, exc: BaseException) -> dict[str, Any]:
    """The output line of a post whose annotation raised an unexpected exception."""
    if not isinstance(item, Prepared):
        return item.to_json()
    logger.warning("line %d: annotation failed (%s: %s)", item.post.line, type(exc).__name__, exc,
                   exc_info=logger.isEnabledFor(logging.DEBUG))
    if isinstance(exc, InvalidInput):
        return ErrorRecord.from_exception(exc, id=item.post.id, line=item.post.line).to_json()
    return ErrorRecord(item.post.id, item.post.line, "AnnotationFailed",
                       f"line {item.post.line}: annotation failed ({type(exc).__name__}: {exc})").to_json()
