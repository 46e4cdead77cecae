"""Closed choices (string enums) and the defaults every command and library call share, declared once.

Torch-free and click-free: `options.py` builds the click choices from these enums, library entry points validate
their arguments with `Choice.parse`, so a typo such as `on_missing_image="skpi"` raises a `ValueError` naming the
allowed values instead of silently behaving like another choice.
"""
from __future__ import annotations

from enum import Enum
from typing import TypeVar

C = TypeVar("C", bound="Choice")


class Choice(str, Enum):
    """A closed set of string values (a `StrEnum` that also runs on Python 3.10): members compare equal to their
    value, `str(member)` is the value, and `parse` turns user input into a member."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def values(cls) -> list[str]:
        """The allowed values, in declaration order (what click shows as choices)."""
        return [member.value for member in cls]

    @classmethod
    def parse(cls: type[C], value: str | C, *, what: str | None = None) -> C:
        """Return the member named by `value` (a member or its string value, case-insensitive).

        Raises:
            ValueError: `value` is not one of the allowed values (the message lists them).
        """
        if isinstance(value, cls):
            return value
        text = str(value).strip().lower() if isinstance(value, str) else value
        for member in cls:
            if member.value == text:
                return member
        name = what or cls.__name__
        raise ValueError(f"{name} must be one of {', '.join(cls.values())}, got {value!r}")


class OnMissingImage(Choice):
    """What to do when a post's image is missing or unreadable (`--on-missing-image`)."""

    TEXT_ONLY = "text-only"  # annotate from the text, note why in `image_error`
    ERROR = "error"  # the post becomes an error record
    SKIP = "skip"  # the post becomes a `skipped` line


class Mode(Choice):
    """What `Annotator.process` does with a chunk."""

    ANNOTATE = "annotate"  # entities
    ANNOTATE_RELATIONS = "annotate+relations"  # entities, then relations between them
    RELATIONS = "relations"  # relations of given pairs/entities (NER only where entities are absent)

    @property
    def wants_relations(self) -> bool:
        return self is not Mode.ANNOTATE


class Command(Choice):
    """The streaming commands (`mmib annotate`, `mmib relations`)."""

    ANNOTATE = "annotate"
    RELATIONS = "relations"


class Engine(Choice):
    """Where `mmib annotate/relations` runs (`--engine`)."""

    LOCAL = "local"  # this machine
    RAY = "ray"  # Ray Data (optional extra)


class DType(Choice):
    """Compute dtype (`--dtype`); `auto` is half precision on CUDA and float32 elsewhere."""

    AUTO = "auto"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class ModelTask(Choice):
    """The two task models of MMIB (`mmib train/eval ner|re`)."""

    NER = "ner"
    RE = "re"


DEFAULT_MODEL = "mmib-default"
"""Registry name of the checkpoint used when no `--model` is given."""
DEFAULT_DEVICE = "auto"
"""`--device` default: CUDA, then MPS, then CPU."""
DEFAULT_BATCH_SIZE = 32
"""Posts (or examples) per forward pass at inference (`annotate`, `relations`, `eval`)."""
DEFAULT_TRAIN_BATCH_SIZE = 16
"""Training examples per optimizer step (`train`)."""
DEFAULT_MAX_TOKENS = 8192
"""Upper bound on padded sub-word pieces per inference batch."""
DEFAULT_CHUNK_SIZE = 256
"""Posts prepared at a time by the library API (`Annotator.annotate`)."""
DEFAULT_MIN_SCORE = 0.0
"""Relations scored below this are dropped, unless the RE checkpoint's config sets `relation_min_score`."""
DEFAULT_MAX_PAIRS = 1000
"""Most ordered entity pairs whose relation is scored per post (`--max-pairs`; nearest pairs first): about 32
entities' worth of pairs. A post with more candidate pairs says so in its `relations_capped` field."""

__all__ = ["Choice", "OnMissingImage", "Mode", "Command", "Engine", "DType", "ModelTask", "DEFAULT_MODEL",
           "DEFAULT_DEVICE", "DEFAULT_BATCH_SIZE", "DEFAULT_TRAIN_BATCH_SIZE", "DEFAULT_MAX_TOKENS",
           "DEFAULT_CHUNK_SIZE", "DEFAULT_MIN_SCORE", "DEFAULT_MAX_PAIRS"]
