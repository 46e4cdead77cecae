"""MMIBConfig: every hyper-parameter of an MMIB model, validated, with JSON-serialisable dict I/O.

This module is plain Python (no torch import), so configs can be read and checked without loading a model.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

NER_LABELS: list[str] = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
"""Word-level BIO tags of the NER head (the CRF runs over these 9 tags, in this order)."""

RE_LABELS: list[str] = [
    "None",
    "/per/per/parent",
    "/per/per/siblings",
    "/per/per/couple",
    "/per/per/neighbor",
    "/per/per/peer",
    "/per/per/charges",
    "/per/per/alumi",  # sic: the MNRE label is misspelled and kept as is
    "/per/per/alternate_names",
    "/per/org/member_of",
    "/per/loc/place_of_residence",
    "/per/loc/place_of_birth",
    "/org/org/alternate_names",
    "/org/org/subsidiary",
    "/org/loc/locate_at",
    "/loc/loc/contain",
    "/per/misc/present_in",
    "/per/misc/awarded",
    "/per/misc/race",
    "/per/misc/religion",
    "/per/misc/nationality",
    "/misc/misc/part_of",
    "/misc/loc/held_on",
]
"""The 23 MNRE relation labels in the id order of HVPNeT's ``ours_rel2id.json`` (``None`` = 0)."""

NUM_WORD_SHAPES: int = 8
"""Size of the word-shape vocabulary of ``mmib_cli.text.word_shape``; id 0 is reserved for special/pad pieces."""

TASKS = ("ner", "re")
AR_SCORES = ("concat", "bilinear")
RE_LOSS_REDUCTIONS = ("mean", "sum")

MAX_SIZES: dict[str, int] = {
    "hidden_size": 16_384,
    "image_feature_dim": 16_384,
    "latent_size": 4_096,
    "num_attention_heads": 256,
    "image_grid": 32,
    "num_word_shapes": 1_024,
    "ar_negatives": 256,
    "max_length": 8_192,
}
"""Largest accepted value of each size field: far above any real MMIB model (the default checkpoint: 384, 1280,
256, 4, 2, 8, 1, 128), low enough that a corrupt or hostile ``config.json`` cannot make building the model allocate
absurd memory."""
MAX_LABELS = 4_096
MAX_LABEL_CHARS = 256
MAX_SPEC_DEPTH = 16
"""Deepest nesting accepted inside a config (the encoder specs are small dicts)."""


def default_labels(task: str) -> list[str]:
    """Return a fresh copy of the default label list of a task.

    Args:
        task: ``"ner"`` or ``"re"``.

    Returns:
        ``NER_LABELS`` or ``RE_LABELS`` (a copy).

    Raises:
        ValueError: for an unknown task.
    """
    if task == "ner":
        return list(NER_LABELS)
    if task == "re":
        return list(RE_LABELS)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


@dataclass
class MMIBConfig:
    """Hyper-parameters of one MMIB model (one task), stored as ``config.json`` in checkpoints.

    Args:
        task: ``"ner"`` (word-level BIO tagging with a CRF) or ``"re"`` (relation classification of a marked pair).
        labels: output labels in id order. Empty (or ``None``) means the task default: ``NER_LABELS`` or
            ``RE_LABELS``. NER labels must be ``"O"``/``"B-X"``/``"I-X"`` tags (the CRF's BIO constraints are
            derived from them).
        hidden_size: width of the text encoder's last hidden state (e.g. 384 for MiniLM-L6, 768 for BERT-base).
        image_feature_dim: channels ``C`` of the image backbone's feature grid ``(B, C, h, w)`` (1280 for
            EfficientNet-Lite0, 2048 for ResNet-50).
        latent_size: width ``d`` of the variational latents and of the fusion blocks. Default 256.
        num_attention_heads: heads of every attention block; must divide ``latent_size``. Default 4.
        attention_dropout: dropout on attention probabilities in every block. Default 0.1.
        dropout: dropout on the text encoder output and on the NER word features. Default 0.1.
        image_grid: ``g``; the backbone grid is adaptive-average-pooled to ``g x g`` region tokens, plus one global
            (average-pooled) token, so ``1 + g*g`` visual tokens. Default 2 (5 tokens).
        use_image: use the image path at all. When False every row gets the learned "no image" tokens. Default True.
        trained_with_images: set by training when images were seen (informational, used by the annotator).
            Default False.
        freeze_image_backbone: keep the image backbone frozen (no gradients, always in eval mode). Default True.
        use_word_shape: add a learned word-shape (case feature) embedding to the text encoder output. Default True.
        num_word_shapes: size of the word-shape vocabulary (id 0 = special/pad). Default ``NUM_WORD_SHAPES`` (8).
        use_kl: add the refinement regularizer (KL of both latents to N(0, I)) to the loss. Default True.
        use_ar: add the alignment regularizer (text-image discriminator BCE) to the loss. Default True.
        beta_kl_text: weight of the text KL term. Default 1.0.
        beta_kl_image: weight of the image KL term. Default 1.0.
        beta_ar: weight of the alignment term. Default 1.0.
        ar_score: discriminator form: ``"bilinear"`` (scalar ``z_t^T W z_v + b``) or ``"concat"`` (per-dimension
            sigmoid over ``[z_t; z_v]``, as the official code). Default ``"bilinear"``: the concat logit is additive
            in ``z_t`` and ``z_v``, so it cannot tell matched from mismatched pairs (see AlignmentDiscriminator).
        ar_negatives: number ``K`` of rolled in-batch negatives per positive pair. Default 1.
        re_loss_reduction: reduction of the RE cross-entropy over the batch, ``"mean"`` or ``"sum"`` (the official
            code sums). Default ``"mean"``.
        text_encoder: spec of the text encoder (opaque here; see ``encoders.load_text_encoder``).
        image_encoder: spec of the image backbone (opaque here; see ``encoders.build_image_backbone``).
        max_length: sub-word pieces per window, special tokens included. Default 128.
        stride: overlap (pieces) between consecutive NER windows of a long post. Default 32.
        entity_markers: RE only: the four tokens inserted before/after the head and the tail (opaque here; see
            ``features.Featurizer``). Default the ``[unused0..3]`` pieces.
        encoder_tuning: how training treats the text encoder (opaque here, e.g. ``"full"``). Default ``"full"``.
        hashtag_words: a one-word ``#hashtag`` is featurised like the two words ``#`` ``hashtag`` (label on the
            name's first piece, the ``#`` piece with the symbol shape), so ``#darwin`` and ``# darwin`` give the
            same input. Default ``False`` (checkpoints trained before it label the ``#`` piece).
        relation_temperature: RE only: calibration temperature ``T`` applied to the relation probabilities at
            inference (``softmax(logits / T)``), fitted on a validation split so that scores read as precision.
            Default 1.0 (uncalibrated); never changes the predicted label.
        relation_min_score: RE only: the default ``--min-score`` of ``annotate --relations`` / ``relations`` for
            this checkpoint (a score in [0, 1] picked for a precision target), or None for the package default (0).

    Raises:
        ValueError: from ``__post_init__`` when a value is out of range or inconsistent; the message quotes it.
    """

    task: str = "ner"
    labels: list[str] = field(default_factory=list)
    hidden_size: int = 384
    image_feature_dim: int = 1280
    latent_size: int = 256
    num_attention_heads: int = 4
    attention_dropout: float = 0.1
    dropout: float = 0.1
    image_grid: int = 2
    use_image: bool = True
    trained_with_images: bool = False
    freeze_image_backbone: bool = True
    use_word_shape: bool = True
    num_word_shapes: int = NUM_WORD_SHAPES
    use_kl: bool = True
    use_ar: bool = True
    beta_kl_text: float = 1.0
    beta_kl_image: float = 1.0
    beta_ar: float = 1.0
    ar_score: str = "bilinear"
    ar_negatives: int = 1
    re_loss_reduction: str = "mean"
    text_encoder: dict[str, Any] = field(default_factory=dict)
    image_encoder: dict[str, Any] = field(default_factory=dict)
    max_length: int = 128
    stride: int = 32
    encoder_tuning: str = "full"
    entity_markers: list[str] = field(default_factory=lambda: ["[unused0]", "[unused1]", "[unused2]", "[unused3]"])
    hashtag_words: bool = False
    relation_temperature: float = 1.0
    relation_min_score: float | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {_short(self.task)}")
        if not self.labels:
            self.labels = default_labels(self.task)
        else:
            self.labels = _string_list("labels", self.labels, max_items=MAX_LABELS)
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        """Check every field; raise ValueError quoting the offending value."""
        self._validate_labels()
        self._validate_numbers()
        self._validate_choices()

    def _validate_labels(self) -> None:
        if len(set(self.labels)) != len(self.labels):
            dupes = sorted({label for label in self.labels if self.labels.count(label) > 1})
            raise ValueError(f"labels must be unique, got duplicates {dupes}")
        if len(self.labels) < 2:
            raise ValueError(f"labels must hold at least 2 labels, got {len(self.labels)}: {self.labels}")
        if self.task == "ner":
            _check_bio_labels(self.labels)
        self.entity_markers = _string_list("entity_markers", self.entity_markers, max_items=4)
        if len(self.entity_markers) != 4:
            raise ValueError(f"entity_markers must hold 4 strings, got {len(self.entity_markers)}")

    def _validate_numbers(self) -> None:
        for name, limit in MAX_SIZES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise ValueError(f"{name} must be an integer in [1, {limit}], got {_short(value)}")
        for name in ("attention_dropout", "dropout"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {_short(value)}")
        for name in ("beta_kl_text", "beta_kl_image", "beta_ar"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite non-negative number, got {_short(value)}")
        stride = self.stride
        if isinstance(stride, bool) or not isinstance(stride, int) or not 0 <= stride < self.max_length:
            raise ValueError(f"stride must be an integer in [0, max_length={self.max_length}), got {_short(stride)}")
        if self.latent_size % self.num_attention_heads != 0:
            raise ValueError(
                f"latent_size ({self.latent_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )

    def _validate_choices(self) -> None:
        for name in ("use_image", "trained_with_images", "freeze_image_backbone", "use_word_shape", "use_kl",
                     "use_ar", "hashtag_words"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {_short(getattr(self, name))}")
        if self.ar_score not in AR_SCORES:
            raise ValueError(f"ar_score must be one of {AR_SCORES}, got {_short(self.ar_score)}")
        if self.re_loss_reduction not in RE_LOSS_REDUCTIONS:
            raise ValueError(
                f"re_loss_reduction must be one of {RE_LOSS_REDUCTIONS}, got {_short(self.re_loss_reduction)}"
            )
        for name in ("text_encoder", "image_encoder"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
            _check_depth(name, getattr(self, name))
        if not isinstance(self.encoder_tuning, str) or not self.encoder_tuning:
            raise ValueError(f"encoder_tuning must be a non-empty string, got {_short(self.encoder_tuning)}")
        self._validate_relation_decoding()

    def _validate_relation_decoding(self) -> None:
        temperature, min_score = self.relation_temperature, self.relation_min_score
        if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                or not (math.isfinite(temperature) and 0.01 <= temperature <= 100.0)):
            raise ValueError(f"relation_temperature must be a number in [0.01, 100], got {_short(temperature)}")
        if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))
                                      or not 0.0 <= min_score <= 1.0):
            raise ValueError(f"relation_min_score must be a score in [0, 1] or null, got {_short(min_score)}")

    # ------------------------------------------------------------------ derived values
    @property
    def num_labels(self) -> int:
        """Number of output labels (CRF tags for NER, classes for RE)."""
        return len(self.labels)

    @property
    def num_image_tokens(self) -> int:
        """Visual tokens per image: one global token plus ``image_grid ** 2`` region tokens."""
        return 1 + self.image_grid * self.image_grid

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable deep copy of every field.

        Returns:
            A dict with one key per dataclass field.
        """
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MMIBConfig:
        """Build a config from a dict such as ``to_dict()`` returned (or a checkpoint's ``config.json``).

        Unknown keys (e.g. ``mmib_version``, ``format_version`` or fields of a newer release) are ignored with a
        warning on the module logger; missing keys take their defaults.

        Args:
            data: field name -> value.

        Returns:
            The validated config.

        Raises:
            ValueError: when a value is invalid.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a config must be a JSON object, got {type(data).__name__}")
        _check_depth("config", data)  # before copying: deepcopy recurses
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in known)
        if unknown:
            logger.warning("ignoring unknown MMIBConfig keys: %s", ", ".join(map(str, unknown))[:500])
        kwargs = {k: copy.deepcopy(v) for k, v in data.items() if k in known}
        if kwargs.get("labels") is None:
            kwargs.pop("labels", None)
        return cls(**kwargs)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any) -> str:
    """``repr`` of a value for an error message, cut to 80 characters (a hostile config may hold huge values)."""
    text = repr(value) if not isinstance(value, (dict, list)) else f"a {type(value).__name__} of {len(value)}"
    return text if len(text) <= 80 else text[:77] + "..."


def _string_list(name: str, value: Any, *, max_items: int) -> list[str]:
    """``value`` as a list of non-empty strings of at most ``MAX_LABEL_CHARS`` characters, or ValueError."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of strings, got {_short(value)}")
    if len(value) > max_items:
        raise ValueError(f"{name} must hold at most {max_items} strings, got {len(value)}")
    for item in value:
        if not isinstance(item, str) or not 0 < len(item) <= MAX_LABEL_CHARS:
            raise ValueError(f"{name} must hold strings of 1 to {MAX_LABEL_CHARS} characters, got {_short(item)}")
    return list(value)


def _check_depth(name: str, value: Any, limit: int = MAX_SPEC_DEPTH) -> None:
    """Raise ValueError when ``value`` nests dicts/lists deeper than ``limit`` levels (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise ValueError(f"{name} is nested deeper than {limit} levels")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _check_bio_labels(labels: list[str]) -> None:
    """Raise ValueError unless ``labels`` is a BIO tag set: "O" plus "B-X"/"I-X" pairs."""
    if "O" not in labels:
        raise ValueError(f"NER labels must contain 'O', got {labels}")
    for label in labels:
        if label == "O":
            continue
        if len(label) < 3 or label[:2] not in ("B-", "I-"):
            raise ValueError(f"NER label {label!r} is not a BIO tag ('O', 'B-<type>' or 'I-<type>')")
        if label.startswith("I-") and "B-" + label[2:] not in labels:
            raise ValueError(f"NER label {label!r} has no matching 'B-{label[2:]}' in {labels}")
