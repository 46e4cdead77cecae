"""Typed records that flow through mmib: input posts, tokens, entities, relations, output lines and error lines.

Output lines always carry ``"line"``, the 1-based physical line number of the input record they answer, so that
``--resume`` can skip finished lines and so that error and output lines can be matched to the input.
Character offsets (``start``/``end``) are Unicode code-point indices into ``text`` (Python ``str`` indexing).
"""
from __future__ import annotations

import copy
import functools
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypedDict, Union

from mmib_cli.errors import InvalidInput

logger = logging.getLogger(__name__)

PostId = Union[str, int]
"""Type of a post id: the input's id field (string or integer), else the 1-based line number."""

RESERVED_KEYS: frozenset[str] = frozenset(
    {"id", "line", "text", "tokens", "bio", "entities", "relations", "image_used", "image_error", "model", "error",
     "skipped"}
)
"""Output keys set by mmib; input fields with these names are not passed through."""

__all__ = [
    "RESERVED_KEYS",
    "Entity",
    "ErrorRecord",
    "InputError",
    "InputPost",
    "OutputPost",
    "PostId",
    "Relation",
    "describe_value",
    "SkippedRecord",
    "TokenRecord",
    "make_output",
    "marker_from_json",
    "output_schema",
    "parse_post",
    "post_id",
]


class InputError(InvalidInput):
    """An input record cannot be annotated; ``error_type`` becomes the ``error.type`` of its error line.

    Args:
        message: what failed and the value at fault.
        error_type: short CamelCase error kind (default ``"InvalidInput"``).
    """

    def __init__(self, message: str, *, error_type: str = "InvalidInput") -> None:
        super().__init__(message)
        self.error_type = error_type


class TokenRecord(TypedDict):
    """A word of the output: its text and ``[start, end)`` code-point offsets in the post text."""

    text: str
    start: int
    end: int


class Entity(TypedDict):
    """A named entity: ``text == post_text[start:end]``; ``label`` is PER/LOC/ORG/MISC; ``score`` in [0, 1]."""

    text: str
    label: str
    start: int
    end: int
    score: float


class Relation(TypedDict):
    """A relation between two entities of the same post; ``relation`` is an MNRE label, ``score`` in [0, 1]."""

    head: Entity
    tail: Entity
    relation: str
    score: float


class _OutputPostBase(TypedDict):
    id: PostId
    line: int
    text: str
    tokens: list[TokenRecord]
    bio: list[str]
    entities: list[Entity]
    image_used: bool
    model: str


class OutputPost(_OutputPostBase, total=False):
    """One annotated output line (input fields pass through as extra keys); ``relations`` is optional."""

    relations: list[Relation]


@dataclass(frozen=True, slots=True)
class InputPost:
    """One validated input record.

    Attributes:
        line: 1-based physical line number in the input file.
        id: the record's id field, or ``line`` when the record has none.
        text: the post text (may be empty: annotated with no tokens).
        image: the image path as written in the input (not resolved), or ``None``.
        tokens: pre-tokenised words given by the input, or ``None`` to tokenise ``text``.
        raw: the parsed JSON object, passed through to the output.
    """

    line: int
    id: PostId
    text: str
    image: str | None
    tokens: list[str] | None
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """An input line that could not be annotated; written in input order as an error line.

    Attributes:
        id: the record's id if it could be read, else the line number.
        line: 1-based physical line number in the input.
        error_type: short CamelCase kind (``InvalidJSON``, ``InvalidInput``, ``ImageNotFound``...).
        message: human-readable reason, naming the value at fault.
    """

    id: PostId
    line: int
    error_type: str
    message: str

    def to_json(self) -> dict[str, Any]:
        """The error line: ``{"id", "line", "error": {"type", "message"}}``."""
        return {"id": self.id, "line": self.line, "error": {"type": self.error_type, "message": self.message}}

    @classmethod
    def from_exception(cls, exc: BaseException, *, id: PostId, line: int) -> ErrorRecord:
        """Build an error record from an exception (its ``error_type`` attribute, else its class name).

        Args:
            exc: the exception raised while handling the record.
            id: the record id (see ``post_id``).
            line: 1-based input line number.

        Returns:
            The error record.
        """
        error_type = getattr(exc, "error_type", None) or type(exc).__name__
        return cls(id=id, line=line, error_type=str(error_type), message=str(exc) or type(exc).__name__)


@dataclass(frozen=True, slots=True)
class SkippedRecord:
    """An input line left out on purpose (a blank line, or ``--on-missing-image skip``): a ``skipped`` line.

    Not an error: it keeps "one output line per input line" true and leaves the exit code at 0.

    Attributes:
        id: the record's id if it could be read, else the line number.
        line: 1-based physical line number in the input.
        reason: why the line was skipped (``"blank line"``, ``"ImageNotFound: ..."``).
    """

    id: PostId
    line: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        """The skipped line: ``{"id", "line", "skipped": {"reason"}}``."""
        return {"id": self.id, "line": self.line, "skipped": {"reason": self.reason}}


def marker_from_json(obj: Mapping[str, Any]) -> ErrorRecord | SkippedRecord:
    """Inverse of ``ErrorRecord.to_json`` / ``SkippedRecord.to_json``.

    Raises:
        ValueError: ``obj`` is neither an error line nor a skipped line.
    """
    if isinstance(obj.get("error"), Mapping):
        return ErrorRecord(obj["id"], obj["line"], obj["error"]["type"], obj["error"]["message"])
    if isinstance(obj.get("skipped"), Mapping):
        return SkippedRecord(obj["id"], obj["line"], obj["skipped"]["reason"])
    raise ValueError(f"not an error or skipped line: {obj!r}")


def post_id(obj: Any, line: int, *, id_field: str = "id") -> PostId:
    """The id to report for a record: its ``id_field`` when it is a string or integer, else the line number.

    Never raises, so it is safe to call when building an error record.

    Args:
        obj: the parsed JSON value of the line (any type).
        line: 1-based line number.
        id_field: name of the id field.

    Returns:
        The id.
    """
    if isinstance(obj, Mapping):
        value = obj.get(id_field)
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return value
    return line


def describe_value(value: Any) -> str:
    """Short description of a JSON value for error messages: its JSON type and a truncated excerpt."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    kind = names.get(type(value), type(value).__name__)
    excerpt = json.dumps(value, ensure_ascii=False, default=str)
    if len(excerpt) > 60:
        excerpt = excerpt[:57] + "..."
    return kind if value is None else f"{kind} ({excerpt})"


def parse_post(
    obj: Any,
    line: int,
    *,
    id_field: str = "id",
    text_field: str = "text",
    image_field: str = "image",
) -> InputPost:
    """Validate one parsed JSON line and turn it into an ``InputPost``.

    Empty text is valid. A missing/null id becomes the line number; a missing, null or empty image means no image.
    An optional ``tokens`` field gives pre-tokenised words (a list of non-empty strings).

    Args:
        obj: the parsed JSON value of the line.
        line: 1-based physical line number.
        id_field: name of the id field.
        text_field: name of the text field.
        image_field: name of the image-path field.

    Returns:
        The validated post.

    Raises:
        InputError: (``InvalidInput``) the value is not an object, the text is missing or not a string, the id is
            not a string/integer, the image is not a string, or ``tokens`` is not a list of non-empty strings.
    """
    where = f"line {line}"
    if not isinstance(obj, dict):
        raise InputError(f'{where}: expected a JSON object like {{"{text_field}": "..."}}, got {describe_value(obj)}')
    raw_id = obj.get(id_field)
    if raw_id is None:
        pid: PostId = line
    elif isinstance(raw_id, str) or (isinstance(raw_id, int) and not isinstance(raw_id, bool)):
        pid = raw_id
    else:
        raise InputError(f'{where}: "{id_field}" must be a string or an integer, got {describe_value(raw_id)}')
    if text_field not in obj:
        raise InputError(
            f'{where}: missing the "{text_field}" field (keys present: {", ".join(map(repr, obj)) or "none"})'
        )
    text = obj[text_field]
    if not isinstance(text, str):
        raise InputError(f'{where}: "{text_field}" must be a string, got {describe_value(text)}')
    image = obj.get(image_field)
    if image is not None and not isinstance(image, str):
        raise InputError(f'{where}: "{image_field}" must be a path string or null, got {describe_value(image)}')
    tokens = obj.get("tokens")
    if tokens is not None:
        if not isinstance(tokens, list):
            raise InputError(f'{where}: "tokens" must be a list of words, got {describe_value(tokens)}')
        for i, tok in enumerate(tokens):
            if not isinstance(tok, str) or not tok.strip():
                raise InputError(f'{where}: "tokens"[{i}] must be a non-empty string, got {describe_value(tok)}')
    return InputPost(line=line, id=pid, text=text, image=image or None, tokens=tokens, raw=obj)


def _token_record(token: Any) -> TokenRecord:
    if isinstance(token, Mapping):
        return {"text": token["text"], "start": int(token["start"]), "end": int(token["end"])}
    return {"text": token.text, "start": int(token.start), "end": int(token.end)}


def make_output(
    post: InputPost,
    *,
    tokens: Iterable[Any],
    bio: Sequence[str],
    entities: Sequence[Entity],
    image_used: bool,
    model: str,
    relations: Sequence[Relation] | None = None,
) -> dict[str, Any]:
    """Build one output line: ``id``/``line``/``text``, the other input fields (passed through), the annotations.

    Key order is deterministic: ``id``, ``line``, ``text``, then the other input keys in input order, then
    ``tokens``, ``bio``, ``entities``, ``relations`` (only when given), ``image_used``, ``model``. Annotation keys
    replace input keys of the same name (e.g. an input ``tokens`` list of strings becomes the token objects); input
    keys in ``RESERVED_KEYS`` (such as ``error`` or ``relations``) never pass through.

    Args:
        post: the input post.
        tokens: words with ``text``/``start``/``end`` (``mmib_cli.text.Token`` or dicts).
        bio: one BIO tag per token.
        entities: entity dicts (see ``mmib_cli.annotation.postprocess.bio_to_entities``).
        image_used: whether an image contributed to the prediction.
        model: ``name@revision`` of the model.
        relations: relation dicts, or ``None`` to leave the key out.

    Returns:
        The output record (a plain dict, JSON-serialisable).

    Raises:
        ValueError: ``bio`` and ``tokens`` differ in length.
    """
    head: dict[str, Any] = {"id": post.id, "line": post.line, "text": post.text}
    annotation: dict[str, Any] = {
        "tokens": [_token_record(t) for t in tokens],
        "bio": list(bio),
        "entities": list(entities),
    }
    if relations is not None:
        annotation["relations"] = list(relations)
    annotation["image_used"] = bool(image_used)
    annotation["model"] = model
    if len(annotation["bio"]) != len(annotation["tokens"]):
        raise ValueError(f"{len(annotation['bio'])} BIO tags for {len(annotation['tokens'])} tokens")
    out = dict(head)
    out.update((k, v) for k, v in post.raw.items() if k not in RESERVED_KEYS)
    out.update(annotation)
    return out


@functools.lru_cache(maxsize=1)
def _load_schema() -> dict[str, Any]:
    text = resources.files("mmib_cli.io").joinpath("output.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def output_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one output line: an annotated post or an error record.

    Returns:
        A fresh copy of the schema dict (package data ``mmib_cli/io/output.schema.json``).
    """
    return copy.deepcopy(_load_schema())
