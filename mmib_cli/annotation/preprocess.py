"""Preprocess: one input line -> a validated post ready for the model stage (CPU only; runs in worker processes).

`prepare` validates the record, splits its words, decodes its image and, for `mmib relations`, checks its relation
inputs; it never raises for bad input: a post that cannot be used becomes an error (or skipped) record here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from mmib_cli.choices import OnMissingImage
from mmib_cli.io.records import ErrorRecord, InputError, InputPost, SkippedRecord, parse_post, post_id
from mmib_cli.annotation.relation_inputs import check_relation_inputs
from mmib_cli.settings import PrepareSettings
from mmib_cli.text import Token, tokenize

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A validated post ready for the model: its words with offsets and, when used, its decoded image."""

    post: InputPost
    tokens: list[Token]
    pixels: torch.Tensor | None = None  # (3, S, S) uint8 crop, normalised per batch
    image_note: str | None = None  # why a given image was not used
    pairs: list[tuple[dict, dict]] | None = None  # relations mode: the (head, tail) entities the input gives
    given_entities: list[dict] | None = None  # relations: the input's `entities`, checked, as output entities
    relation_inputs_checked: bool = False  # `check_relation_inputs` ran on it


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
    if settings.relation_inputs is not None:
        checked = check_relation_inputs(prepared, settings.relation_inputs)
        if isinstance(checked, ErrorRecord):
            return checked
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
        else:  # uint8 until its batch is built (4x less memory per queued photo); normalised in `flow.AnnotationSession._visual_tokens`
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
