"""Save and load an MMIBModel as a checkpoint directory (config.json + model.safetensors + README.md).

Only what differs from the pinned base encoders is stored: every MMIB layer and head, the trainable part of the
text encoder, and the image backbone unless its weights come from a verified base file. Loading rebuilds the
base encoders from the specs in the config, then loads the stored tensors over them (safetensors only).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmib_cli._version import __version__
from mmib_cli.checkpoint.encoders import ImageBackboneInfo, build_image_backbone, load_text_encoder
from mmib_cli.errors import InvalidCheckpoint
from mmib_cli.features import Featurizer
from mmib_cli.model.tuning import apply_encoder_tuning

if TYPE_CHECKING:
    from mmib_cli.model import MMIBConfig, MMIBModel

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINT_KEYS = ("mmib_version", "format_version", "trained_on", "metrics")  # config.json keys outside MMIBConfig
TEXT_PREFIX = "text_encoder."
IMAGE_PREFIX = "image_backbone."


@dataclass
class LoadedModel:
    """A model ready for inference or training, with what is needed to feed it."""

    model: MMIBModel
    featurizer: Featurizer
    image_info: ImageBackboneInfo | None
    directory: Path | None = None


def build_model(config: MMIBConfig, *, load_image_backbone: bool = True) -> LoadedModel:
    """Build an MMIBModel with freshly loaded base encoders (used by training and by loading)."""
    from mmib_cli.model import MMIBModel

    text_encoder, tokenizer = load_text_encoder(config.text_encoder)
    backbone, image_info = (None, None)
    if load_image_backbone and config.use_image:
        backbone, image_info = build_image_backbone(config.image_encoder)
    apply_encoder_tuning(text_encoder, config.encoder_tuning)
    model = MMIBModel(config, text_encoder, backbone)
    featurizer = Featurizer.from_config(tokenizer, config)
    return LoadedModel(model, featurizer, image_info)


def stored_state_dict(model: torch.nn.Module, image_info: ImageBackboneInfo | None) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint must hold: everything except frozen pinned-base parameters and buffers."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    keep: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(TEXT_PREFIX) and name not in trainable:
            continue
        if name.startswith(IMAGE_PREFIX) and image_info is not None and image_info.pinned and name not in trainable:
            continue
        keep[name] = tensor.detach().cpu().contiguous()
    return keep


def save_model(loaded: LoadedModel, directory: str | Path, *, dtype: torch.dtype | None = None,
               card: str | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write `loaded.model` as a checkpoint directory; `dtype=torch.float16` halves the stored size."""
    from mmib_cli.storage.format import save_state

    directory = Path(directory)
    config = loaded.model.config.to_dict()
    config.update(mmib_version=__version__, format_version=FORMAT_VERSION)
    if extra:
        config.update(extra)
    save_state(directory, config, stored_state_dict(loaded.model, loaded.image_info), dtype=dtype, card=card)
    return directory


def load_config(directory: str | Path) -> Any:
    """Read and validate a checkpoint's `config.json` as an `MMIBConfig`, allocating nothing else.

    Raises:
        InvalidCheckpoint: the file is missing or not JSON, or a value has the wrong type, an absurd size or
            nests too deeply (the message names the field).
    """
    from mmib_cli.storage.format import read_config
    from mmib_cli.model import MMIBConfig

    if not Path(directory).is_dir():
        raise InvalidCheckpoint(f"checkpoint directory {directory} does not exist")
    raw = read_config(directory)
    try:
        return MMIBConfig.from_dict({k: v for k, v in raw.items() if k not in CHECKPOINT_KEYS})
    except (ValueError, TypeError) as exc:
        raise InvalidCheckpoint(f"invalid checkpoint {directory}: config.json: {exc}") from None


def load_model(directory: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
               for_inference: bool = True) -> LoadedModel:
    """Load a single-task checkpoint directory; returns the model in eval mode on `device`.

    When the checkpoint was trained without images, the image backbone is not loaded at all for inference, so
    no untrained visual tokens can reach the fusion (every post takes the learned no-image path).

    Raises:
        InvalidCheckpoint: config.json holds invalid values (checked before anything is allocated), or tensors are
            missing or unexpected for the configured architecture.
    """
    from mmib_cli.storage.format import load_state

    directory = Path(directory)
    config = load_config(directory)
    _, state = load_state(directory)
    with_images = config.trained_with_images or not for_inference
    loaded = build_model(config, load_image_backbone=with_images)
    try:
        result = loaded.model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape for the configured architecture
        raise InvalidCheckpoint(f"checkpoint {directory} does not match its config: {exc}") from None
    base_prefixes = (TEXT_PREFIX,) + ((IMAGE_PREFIX,) if loaded.image_info and loaded.image_info.pinned else ())
    # base-encoder tensors may be absent (rebuilt from the base), except those training changes (fine-tuned
    # layers, LoRA adapters, a tuned backbone): without them the base values would silently stand in
    trained = {name for name, param in loaded.model.named_parameters() if param.requires_grad}
    missing = [k for k in result.missing_keys if not k.startswith(base_prefixes) or k in trained]
    unexpected = [k for k in result.unexpected_keys if not (k.startswith(IMAGE_PREFIX) and not with_images)]
    if missing or unexpected:
        raise InvalidCheckpoint(
            f"checkpoint {directory} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    loaded.model.to(device=device)
    if dtype is not None and dtype != torch.float32:
        loaded.model.to(dtype=dtype)
    loaded.model.eval()
    loaded.directory = directory
    return loaded
