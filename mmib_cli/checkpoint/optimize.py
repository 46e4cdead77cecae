"""Inference-time model preparation: LoRA merged, BatchNorm and static padding folded into convolutions,
channels-last image backbone. Run once by `checkpoint.bundle.load_bundle` for annotation; never on a model that will
be trained or saved.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def optimize_for_inference(loaded) -> None:
    """Make a loaded, eval-mode model faster for inference only; outputs are unchanged up to float rounding.

    * LoRA adapters are merged into their base weights (one matmul per projection instead of three).
    * float32 image backbones: every BatchNorm that directly follows a convolution is folded into it, and
      symmetric "same" zero padding is moved into the convolution itself; the result is checked against the
      unchanged backbone on a probe image and dropped if it differs.
    * On CPU the image backbone runs in channels-last memory format (faster oneDNN convolutions).

    Measured on CPU (benchmarks/README.md): EfficientNet-Lite0 and ResNet-50 1.7x and 2.4x faster, text encoder
    about 15% faster. The model must not be trained or saved afterwards (BatchNorm layers become Identity).
    """
    model = loaded.model
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency; without it there are no adapters
        LoraLayer = None  # noqa: N806
    if LoraLayer is not None:
        for module in model.text_encoder.modules():
            if isinstance(module, LoraLayer) and not module.merged:
                module.merge()
    backbone = getattr(model, "image_backbone", None)
    param = next(backbone.parameters(), None) if backbone is not None and loaded.image_info is not None else None
    if param is not None:
        if param.dtype == torch.float32:
            model.image_backbone = _folded(backbone, loaded.image_info.image_size, param.device)
        if param.device.type == "cpu":
            model.image_backbone.to(memory_format=torch.channels_last)


def _folded(backbone: nn.Module, image_size: int, device: torch.device) -> nn.Module:
    """`backbone` with conv+BatchNorm pairs and symmetric static padding folded, if that keeps its output."""
    folded = copy.deepcopy(backbone)
    changed = _fold_batch_norms(folded) + _fold_static_padding(folded)
    if not changed:
        return backbone
    probe = torch.randn((2, 3, image_size, image_size), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        want, got = backbone(probe), folded(probe)
    scale = float(want.abs().max()) or 1.0
    if want.shape != got.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * scale):
        logger.debug("image backbone: folding BatchNorm/padding changed its output; keeping it unfolded")
        return backbone
    return folded


def _fold_batch_norms(root: nn.Module) -> int:
    """Fold each eval BatchNorm2d registered right after a Conv2d of matching width into that conv (in place)."""
    count = 0
    for module in root.modules():
        children = list(module.named_children())
        for (_, conv), (name, norm) in zip(children, children[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and not norm.training
                    and norm.running_mean is not None and norm.num_features == conv.out_channels):
                continue
            with torch.no_grad():
                scale = torch.rsqrt(norm.running_var.float() + norm.eps)
                shift = -norm.running_mean.float() * scale
                if norm.affine:
                    scale, shift = scale * norm.weight.float(), shift * norm.weight.float() + norm.bias.float()
                bias = conv.bias.float() if conv.bias is not None else torch.zeros_like(scale)
                conv.weight.copy_(conv.weight.float() * scale.reshape(-1, 1, 1, 1))
                conv.bias = nn.Parameter((bias * scale + shift).to(conv.weight.dtype), requires_grad=False)
            setattr(module, name, nn.Identity())
            count += 1
    return count


def _fold_static_padding(root: nn.Module) -> int:
    """Move a conv's symmetric `static_padding = ZeroPad2d` (TF "same" convs) into its own `padding` (in place)."""
    count = 0
    for module in root.modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(module, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d) and tuple(module.padding) == (0, 0):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = nn.Identity()
                count += 1
    return count
