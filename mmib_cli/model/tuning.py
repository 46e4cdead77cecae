"""How training treats the text encoder (`MMIBConfig.encoder_tuning`): full, frozen, top layers or LoRA adapters.

Pure torch (+ peft for LoRA): it only sets `requires_grad` and injects adapter modules, in place.
"""
from __future__ import annotations

from torch import nn

LORA_TARGETS = ["query", "key", "value", "dense"]
"""Names of the BERT projections that receive LoRA adapters (attention and feed-forward)."""

LORA_TARGETS_BY_MODEL_TYPE = {
    **{name: LORA_TARGETS for name in ("bert", "roberta", "xlm-roberta", "camembert", "electra")},
    "mpnet": ["q", "k", "v", "o", "dense"],  # MPNet names its attention projections attn.q/k/v/o
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
}
"""LoRA target names per `config.model_type`: attention and feed-forward projections of every layer. An encoder
type missing here is refused rather than adapted on the wrong modules (BERT's names on MPNet would silently match
only its feed-forward `dense` layers)."""


def lora_targets(text_encoder: nn.Module) -> list[str]:
    """The LoRA target names for this encoder (by its `config.model_type`; a model without a config is BERT-like).

    Raises:
        ValueError: an encoder type whose projection names are not known.
    """
    model_type = getattr(getattr(text_encoder, "config", None), "model_type", "bert")
    if model_type not in LORA_TARGETS_BY_MODEL_TYPE:
        raise ValueError(f"LoRA: no adapter targets known for text encoders of type {model_type!r} "
                         f"(known: {', '.join(sorted(LORA_TARGETS_BY_MODEL_TYPE))})")
    return LORA_TARGETS_BY_MODEL_TYPE[model_type]


def apply_encoder_tuning(text_encoder: nn.Module, tuning: str) -> None:
    """Set `requires_grad` on the text encoder, in place.

    Args:
        text_encoder: the BERT-style encoder.
        tuning: `full`, `frozen`, `top:N` (last N layers; embeddings frozen) or `lora:R` (rank-R LoRA adapters on
            every projection, base frozen).

    Raises:
        ValueError: an unknown setting, or `top:N` beyond the encoder's layer count.
    """
    if tuning == "full":
        return
    for param in text_encoder.parameters():
        param.requires_grad = False
    if tuning == "frozen":
        return
    if tuning.startswith("lora:"):
        inject_lora(text_encoder, int(tuning.split(":", 1)[1]))
        return
    if tuning.startswith("top:"):
        layers = encoder_layers(text_encoder)
        count = int(tuning.split(":", 1)[1])
        if not 0 < count <= len(layers):
            raise ValueError(f"encoder_tuning {tuning!r}: the text encoder has {len(layers)} layers")
        for layer in layers[len(layers) - count:]:
            for param in layer.parameters():
                param.requires_grad = True
        return
    raise ValueError(f"unknown encoder_tuning {tuning!r}: use full, frozen, top:N or lora:R")


def inject_lora(text_encoder: nn.Module, rank: int) -> None:
    """Add LoRA adapters (peft) of rank `rank` to every attention and feed-forward projection, in place; only the
    adapters stay trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.1, target_modules=lora_targets(text_encoder))
    inject_adapter_in_model(config, text_encoder)
    bare = _attention_linears_without_adapter(text_encoder)
    if bare:
        raise ValueError(f"LoRA: the targets {config.target_modules} left attention projections without adapters "
                         f"(e.g. {', '.join(bare[:3])})")
    for name, param in text_encoder.named_parameters():
        param.requires_grad = "lora_" in name


def _attention_linears_without_adapter(text_encoder: nn.Module) -> list[str]:
    """Plain linear layers inside attention blocks that received no adapter (peft wraps each adapted one)."""
    return [name for name, module in text_encoder.named_modules()
            if type(module) is nn.Linear and ("attention" in name or "attn" in name)
            and ".base_layer" not in name and ".lora_" not in name]


def lora_rank(tuning: str) -> int | None:
    """The rank of a `lora:R` setting, None for the other settings (and for a `lora:` without a number)."""
    prefix, _, rank = tuning.partition(":")
    return int(rank) if prefix == "lora" and rank.isdigit() else None


def copy_into_wider_lora(source: nn.Module, target: nn.Module) -> None:
    """Copy every tensor of `source` into `target`, whose LoRA adapters have a rank at least as large, in place.

    An adapter's A rows and B columns fill the first ranks of the wider one; the other ranks keep the target's
    initialisation (random A, zero B), and `lora_alpha / r` is 2 at every rank, so the target computes exactly what
    the source computes until training moves the new ranks.

    Raises:
        ValueError: the two modules hold different tensors, or a target adapter is narrower than the source's.
    """
    target_state = target.state_dict()
    source_state = source.state_dict()
    if set(source_state) != set(target_state):
        raise ValueError(f"the modules hold different tensors: {sorted(set(source_state) ^ set(target_state))[:5]}")
    for name, tensor in source_state.items():
        dest = target_state[name]
        if "lora_A" in name and dest.size(0) >= tensor.size(0):
            dest[: tensor.size(0)].copy_(tensor)
        elif "lora_B" in name and dest.size(1) >= tensor.size(1):
            dest[:, : tensor.size(1)].copy_(tensor)
        elif dest.shape == tensor.shape:
            dest.copy_(tensor)
        else:
            raise ValueError(f"{name}: cannot copy {tuple(tensor.shape)} into {tuple(dest.shape)}")


def encoder_layers(text_encoder: nn.Module) -> list[nn.Module]:
    """The transformer layers of a BERT-style encoder (`encoder.layer`).

    Raises:
        ValueError: the encoder has no `encoder.layer`.
    """
    encoder = getattr(text_encoder, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise ValueError("encoder_tuning top:N needs a BERT-style encoder with encoder.layer")
    return list(layers)
