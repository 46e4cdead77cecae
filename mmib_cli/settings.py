"""Per-post settings of the library, validated once when built (torch-free).

`PrepareSettings` says how `preprocess.prepare` reads a record; `RelationSettings` how relations are chosen and
decoded; `RelationInputs` how `mmib relations` reads the pairs and entities a post gives. The CLI's run plan
(`runs.plan`) builds them from the command line; engines pass them on unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmib_cli.choices import DEFAULT_MAX_PAIRS, OnMissingImage

__all__ = ["PrepareSettings", "RelationInputs", "RelationSettings"]


@dataclass(frozen=True)
class RelationInputs:
    """How `mmib relations` reads a post's relation inputs.

    Attributes:
        pair: classify every ordered pair of the given (or found) entities, else only the pairs the input gives.
        entity_types: the entity types the relation labels are defined over (empty: any label is accepted).
    """

    pair: bool
    entity_types: frozenset[str] = frozenset()


@dataclass
class PrepareSettings:
    """How `prepare` reads a record: field names, where images live, what to do when one is missing."""

    id_field: str = "id"
    text_field: str = "text"
    image_field: str = "image"
    base_dir: Path = field(default_factory=Path.cwd)
    image_root: Path | None = None
    on_missing_image: OnMissingImage = OnMissingImage.TEXT_ONLY
    image_size: int | None = None  # None: the model takes no image, so images are not decoded
    max_image_bytes: int | None = None  # larger image files are refused; None: io.images.DEFAULT_MAX_IMAGE_BYTES
    confine_images: bool = False  # refuse image paths that resolve outside image_root (else base_dir)
    relation_inputs: RelationInputs | None = None  # `mmib relations`: check the pairs/entities each post gives

    def __post_init__(self) -> None:
        self.on_missing_image = OnMissingImage.parse(self.on_missing_image, what="on_missing_image")


@dataclass
class RelationSettings:
    """Options of relation extraction (`mmib relations` / `annotate --relations`)."""

    pair: bool = True  # every ordered entity pair (else only the pairs the input gives)
    min_score: float | None = None  # None: the RE checkpoint's `relation_min_score`, else DEFAULT_MIN_SCORE
    keep_none: bool = False
    type_constraints: bool = True
    max_pairs: int = DEFAULT_MAX_PAIRS  # most ordered pairs scored per post (nearest first); 0 = no cap

    def __post_init__(self) -> None:
        if self.min_score is not None and not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score!r}")
        if isinstance(self.max_pairs, bool) or not isinstance(self.max_pairs, int) or self.max_pairs < 0:
            raise ValueError(f"max_pairs must be an integer >= 0 (0: no cap), got {self.max_pairs!r}")
