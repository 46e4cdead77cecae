"""The library API: `Annotator.from_pretrained(model).annotate(records)` yields output dicts.

A post flows preprocess -> forward -> postprocess: `preprocess.prepare` (CPU, per post: validate, split words,
decode the image, check relation inputs; runs in worker processes), then an `AnnotationSession` (`flow.py`: windows
of all posts in fixed-shape model calls, CRF, relations) that returns each post's record, in input order.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator, Sequence

import torch

from mmib_cli.checkpoint.assemble import LoadedModel
from mmib_cli.choices import DEFAULT_CHUNK_SIZE, DEFAULT_DEVICE, DEFAULT_MODEL, DType, Mode
from mmib_cli.errors import InvalidCheckpoint
from mmib_cli.annotation.flow import AnnotationSession
from mmib_cli.io.records import ErrorRecord
from mmib_cli.annotation.postprocess import relation_entity_types
from mmib_cli.annotation.preprocess import Prepared, Skipped, prepare, word_tokens
from mmib_cli.settings import PrepareSettings, RelationInputs, RelationSettings
from mmib_cli.storage.model_info import ModelInfo

__all__ = ["Annotator", "Prepared", "PrepareSettings", "RelationSettings", "Skipped", "prepare", "word_tokens"]

logger = logging.getLogger(__name__)


class Annotator:
    """Annotate posts with entities (and relations) using an MMIB checkpoint (NER and/or RE models).

    Example:
        >>> annotator = Annotator.from_pretrained("mmib-default")
        >>> next(annotator.annotate([{"text": "Kawhi Leonard joins the Clippers"}]))["entities"]
    """

    def __init__(self, ner: LoadedModel | None, re: LoadedModel | None, *, model_label: str) -> None:
        if ner is None and re is None:
            raise InvalidCheckpoint("an Annotator needs at least one of an NER and an RE model")
        self.ner, self.re = ner, re
        self.model_label = model_label

    @classmethod
    def from_pretrained(cls, model: str | ModelInfo = DEFAULT_MODEL, *, revision: str | None = None,
                        device: str = DEFAULT_DEVICE, dtype: str | DType = DType.AUTO, cache_dir: str | None = None,
                        token: str | None = None, online: bool | None = None) -> "Annotator":
        """Load a registry name, a checkpoint directory or a hub id `org/name[@rev]` (see `mmib download`), or a
        model a run already resolved (`storage.model_info.ModelInfo`)."""
        from mmib_cli.checkpoint.bundle import load_bundle

        bundle = load_bundle(model, revision=revision, device=device, dtype=dtype, cache_dir=cache_dir, token=token,
                             online=online)
        return cls(bundle.ner, bundle.re, model_label=bundle.label)

    @property
    def device(self) -> torch.device:
        """The device the models run on."""
        loaded = self.ner or self.re
        return next(loaded.model.parameters()).device

    @property
    def image_models(self) -> list[LoadedModel]:
        """The loaded models that take images (trained with images and built with a backbone)."""
        return [m for m in (self.ner, self.re) if m is not None and m.image_info is not None]

    def prepare_settings(self, mode: Mode = Mode.ANNOTATE, relation_settings: RelationSettings | None = None,
                         **kwargs: Any) -> PrepareSettings:
        """PrepareSettings matching this annotator's image preprocessing (no decoding if no model uses images) and,
        for `Mode.RELATIONS`, the relation inputs each post must give."""
        settings = PrepareSettings(**kwargs)
        if self.image_models:
            settings.image_size = self.image_models[0].image_info.image_size
        if mode is Mode.RELATIONS:
            settings.relation_inputs = self.relation_inputs(relation_settings or RelationSettings(pair=False))
        return settings

    def relation_inputs(self, relation_settings: RelationSettings) -> RelationInputs:
        """How `mmib relations` checks the pairs and entities a post gives, under these settings (with type
        constraints, entity labels must be types this annotator's relation labels use)."""
        types = relation_entity_types(self.re.model.config.labels) \
            if self.re is not None and relation_settings.type_constraints else frozenset()
        return RelationInputs(relation_settings.pair, types)

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
        settings = self.prepare_settings(mode, relation_settings, **prepare_kwargs)
        session = self.session(mode, relation_settings, max_wait=0)  # a chunk's records before the next is read
        chunk: list[Prepared | Skipped | ErrorRecord] = []
        for line, obj in enumerate(records, 1):
            chunk.append(prepare(line, obj, settings))
            if len(chunk) >= chunk_size:
                yield from session.feed(chunk)
                chunk = []
        yield from session.feed(chunk)
        yield from session.finish()

    # -- the model stage -------------------------------------------------------------------------------------
    def session(self, mode: Mode | str, relation_settings: RelationSettings | None = None,
                **kwargs: Any) -> AnnotationSession:
        """A stream of posts through the models: `feed(chunk)` and `finish()` return records in input order.

        Raises:
            InvalidCheckpoint: the mode needs a task model (ner/re) this annotator lacks.
            ValueError: `mode` is not a `Mode` value.
        """
        return AnnotationSession(self, Mode.parse(mode, what="mode"), relation_settings, **kwargs)

    def process(self, chunk: Sequence[Prepared | Skipped | ErrorRecord], mode: Mode | str,
                relation_settings: RelationSettings | None = None) -> list[dict[str, Any]]:
        """Annotate a chunk of prepared posts; returns output dicts in chunk order (a one-chunk `session`).

        `mode` is a `Mode` (or its value: `annotate`, `annotate+relations`, `relations`). A failure other than a
        run-level `MMIBError` (a tokenizer or model error caused by one odd post, out of memory...) does not lose
        the chunk: the posts of the failed call are run again one at a time, and a post that still fails becomes an
        `AnnotationFailed` error record.

        Raises:
            InvalidCheckpoint: the mode needs a task model (ner/re) this annotator lacks.
            ValueError: `mode` is not a `Mode` value.
        """
        session = self.session(mode, relation_settings)
        return session.feed(chunk) + session.finish()
