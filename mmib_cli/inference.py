"""Batched forward passes shared by the annotation pipeline, evaluation and training-time validation.

Input is already featurised; output is plain python per post. Everything runs under `torch.inference_mode`.
"""
from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from mmib_cli.choices import DEFAULT_BATCH_SIZE, DEFAULT_MAX_TOKENS
from mmib_cli.features import Window, merge_window_emissions

logger = logging.getLogger(__name__)


@dataclass
class NERPrediction:
    """Word-level tags (label strings) and the probability of each predicted tag."""

    tags: list[str]
    tag_scores: list[float]


LENGTH_STEP = 8
"""Padded windows are padded to a multiple of this many pieces (see `padded_length`)."""

MIN_PADDED_LENGTH = 2 * LENGTH_STEP
"""No window is padded to fewer pieces than this: a row padded to 8 pieces came out of the text encoder 1e-6 away from
the same row padded to 16 or more, while every padding from 16 to 128 pieces gave the same bits."""

ROW_ALIGN = 4
"""Every linear layer multiplies a multiple of this many rows (see `RowAlignedLinear`)."""

SPLIT_ROWS = 8
"""A batch also closes where the padded length steps up, once it holds this many rows: fewer rows then pay for a
longer row's padding, and batches stay full enough for the matmuls (on 1,000 tweet-like posts: 8 % fewer padded
pieces than batches cut by size alone, for 46 instead of 32 batches; benchmarks/README.md)."""

IMAGE_BATCH = 16
"""The image backbone always runs on this many images per call (see `FixedImageBatches`); inference runs it once per
chunk of posts (`post_visual_tokens`), so only a chunk's last call carries blank images."""


def padded_length(pieces: int, max_length: int) -> int:
    """The fewest pieces a window of `pieces` pieces is padded to, whatever else is in its batch.

    The next multiple of `LENGTH_STEP` strictly above `pieces` (so every row has a padded position, and attention
    always takes the masked path) and at least `MIN_PADDED_LENGTH`, capped at `max_length`, the longest window the
    featurizer makes.
    """
    return max(pieces, min(max(MIN_PADDED_LENGTH, (pieces // LENGTH_STEP + 1) * LENGTH_STEP), max_length))


def _mixes(pieces: int, max_length: int) -> bool:
    """Whether a window of `pieces` pieces may share a batch padded further than its own `padded_length`.

    True for every padded window whose own padded length is a multiple of `LENGTH_STEP`: such a row gives the same
    bits at any padded length from `MIN_PADDED_LENGTH` to `max_length` that is a multiple of `LENGTH_STEP`
    (tests/test_batch_invariance.py). A window that fills `max_length` (no padding, so no mask) or is padded to a
    `max_length` that is not such a multiple is only batched with windows of its own length.
    """
    length = padded_length(pieces, max_length)
    return length > pieces and length % LENGTH_STEP == 0


def batch_length(rows: Sequence[Window], max_length: int) -> int:
    """The padded length of a batch of `length_batches`: its longest row's `padded_length`."""
    return max(padded_length(len(w.input_ids), max_length) for w in rows)


def length_batches(windows: Sequence[Window], batch_size: int, max_tokens: int,
                   max_length: int | None = None) -> list[list[int]]:
    """Indices of `windows` grouped into batches that can be padded without changing any row's result.

    Windows sorted by length are cut into batches of at most `batch_size` rows and `max_tokens` padded pieces, each
    padded to its longest row's `padded_length` (`batch_length`); a batch of `SPLIT_ROWS` rows or more also closes
    where the padded length steps up. A window that does not `_mixes` is batched only
    with windows of its own length. Which row lands in which batch changes with the batch mates, but no row's
    result does. Batches come shortest first, windows of one length in input order.
    """
    cap = max_length or max((len(w.input_ids) for w in windows), default=0)
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(windows):
        n = len(w.input_ids)
        groups.setdefault(0 if _mixes(n, cap) else n, []).append(i)
    batches: list[list[int]] = []
    for _, members in sorted(groups.items()):
        members.sort(key=lambda i: len(windows[i].input_ids))
        current: list[int] = []
        current_length = 0
        for i in members:
            length = padded_length(len(windows[i].input_ids), cap)
            if current and (len(current) >= batch_size or length * (len(current) + 1) > max_tokens
                            or (length > current_length and len(current) >= SPLIT_ROWS)):
                batches.append(current)
                current = []
            current.append(i)
            current_length = length
        if current:
            batches.append(current)
    return batches


def _forward(model, featurizer, rows: Sequence[Window], task: str, image_tokens: torch.Tensor | None,
             image_present: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Logits of `rows` (one batch of `length_batches`), padded to their `batch_length`.

    `image_tokens` are the posts' `post_visual_tokens` (row `post` of each window). A lone row is run with a
    text-only copy of itself as a second row: CPU batched matmuls round a batch of one differently from any larger
    batch (the same row's emissions came out 1e-7 apart), while 2 to 64 rows agree.
    """
    padded = list(rows) + [rows[0]] * (len(rows) == 1)
    batch = _to(featurizer.collate(padded, task, length=batch_length(rows, featurizer.max_length)), device)
    if image_tokens is not None and image_present is not None:
        posts = torch.tensor([w.post for w in padded], dtype=torch.long)
        present = image_present[posts].to(device)
        present[len(rows):] = False  # the copy of a lone row needs no photo: its output is dropped
        batch.update(image_tokens=image_tokens[posts.to(image_tokens.device)], image_present=present)
    return model(**batch).logits[: len(rows)]


@torch.inference_mode()
def post_visual_tokens(model, windows: Sequence[Window], pixel_values: torch.Tensor | None,
                       image_present: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """Visual tokens `(posts, N, d)` of the posts with a photo that `windows` read (zeros elsewhere), or None.

    Each such photo goes through the backbone once, however many windows or pairs its post has (a post without a
    window, e.g. one without an entity pair, costs nothing), in calls of `IMAGE_BATCH` photos (the last call padded
    by `FixedImageBatches` after `make_batch_invariant`).
    """
    if pixel_values is None or image_present is None or not model.uses_images:
        return None
    wanted = torch.zeros_like(image_present, dtype=torch.bool)
    wanted[sorted({w.post for w in windows})] = True
    index = (wanted & image_present.bool()).nonzero(as_tuple=True)[0]
    if not len(index):
        return None
    parts = [model.visual_tokens(pixel_values[index[k: k + IMAGE_BATCH]].to(device, non_blocking=True))
             for k in range(0, len(index), IMAGE_BATCH)]
    tokens = torch.cat(parts)
    out = tokens.new_zeros((len(pixel_values), *tokens.shape[1:]))
    out[index.to(device)] = tokens
    return out


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if k not in ("labels", "label_weights")}


@torch.inference_mode()
def predict_ner(loaded, windows_per_post: Sequence[Sequence[Window]], *, batch_size: int = DEFAULT_BATCH_SIZE,
                max_tokens: int = DEFAULT_MAX_TOKENS, pixel_values: torch.Tensor | None = None,
                image_present: torch.Tensor | None = None) -> list[NERPrediction]:
    """Tag every word of every post (windows from `Featurizer.encode_ner`, `post` = index into pixel_values)."""
    model, featurizer = loaded.model, loaded.featurizer
    device = next(model.parameters()).device
    labels = model.config.labels
    flat = [w for windows in windows_per_post for w in windows]
    rows_out: list[torch.Tensor | None] = [None] * len(flat)
    tokens = post_visual_tokens(model, flat, pixel_values, image_present, device)
    for idx in length_batches(flat, batch_size, max_tokens, featurizer.max_length):
        emissions = _forward(model, featurizer, [flat[i] for i in idx], "ner", tokens, image_present,
                             device).float().cpu()
        for k, i in enumerate(idx):
            rows_out[i] = emissions[k, : len(flat[i].word_index)]
    merged: list[torch.Tensor] = []
    cursor = 0
    for windows in windows_per_post:
        merged.append(merge_window_emissions(windows, rows_out[cursor: cursor + len(windows)]))
        cursor += len(windows)
    return _decode(model, merged, labels)


def _decode(model, merged: list[torch.Tensor], labels: list[str]) -> list[NERPrediction]:
    out: list[NERPrediction] = [NERPrediction([], []) for _ in merged]
    todo = [i for i, m in enumerate(merged) if m.shape[0] > 0]
    if not todo:
        return out
    device = next(model.parameters()).device
    length = max(merged[i].shape[0] for i in todo)
    num_tags = merged[todo[0]].shape[1]
    emissions = torch.zeros((len(todo), length, num_tags))
    mask = torch.zeros((len(todo), length), dtype=torch.bool)
    for row, i in enumerate(todo):
        n = merged[i].shape[0]
        emissions[row, :n] = merged[i]
        mask[row, :n] = True
    with _single_threaded(device):
        tags, marginals = model.decode(emissions.to(device), mask.to(device))
    marginals = marginals.float().cpu()
    for row, i in enumerate(todo):
        seq = tags[row]
        out[i] = NERPrediction([labels[t] for t in seq],
                               [float(marginals[row, j, t]) for j, t in enumerate(seq)])
    return out


@contextmanager
def _single_threaded(device: torch.device) -> Iterator[None]:
    """Run CPU work made of many tiny ops (the CRF's per-word loop) on one thread.

    Each step of the Viterbi / forward-backward loop is a `(B, K, K)` op; waking a thread pool for it costs far more
    than the op, and on a busy machine it made a 20k-word post take close to a minute instead of a few seconds.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.inference_mode()
def predict_re(loaded, windows: Sequence[Window], *, batch_size: int = DEFAULT_BATCH_SIZE,
               max_tokens: int = DEFAULT_MAX_TOKENS, pixel_values: torch.Tensor | None = None,
               image_present: torch.Tensor | None = None) -> torch.Tensor:
    """Relation probabilities `(len(windows), num_labels)` for windows from `Featurizer.encode_re_batch`."""
    model, featurizer = loaded.model, loaded.featurizer
    device = next(model.parameters()).device
    probs = torch.zeros((len(windows), len(model.config.labels)))
    tokens = post_visual_tokens(model, windows, pixel_values, image_present, device)
    for idx in length_batches(windows, batch_size, max_tokens, featurizer.max_length):
        logits = _forward(model, featurizer, [windows[i] for i in idx], "re", tokens, image_present,
                          device).float()
        probs[torch.tensor(idx)] = torch.softmax(logits, dim=-1).cpu()
    return probs


def optimize_for_inference(loaded) -> None:
    """Make a loaded, eval-mode model faster for inference only; outputs are unchanged up to float rounding.

    * LoRA adapters are merged into their base weights (one matmul per projection instead of three).
    * float32 image backbones: every BatchNorm that directly follows a convolution is folded into it, and
      symmetric "same" zero padding is moved into the convolution itself; the result is checked against the
      unchanged backbone on a probe image and dropped if it differs.
    * On CPU the image backbone runs in channels-last memory format (faster oneDNN convolutions).
    * `make_batch_invariant`: a row's result no longer depends on the rows batched with it.

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
    make_batch_invariant(model)


class RowAlignedLinear(nn.Linear):
    """`nn.Linear` that always multiplies a multiple of `ROW_ALIGN` rows (zero rows are added, then dropped).

    CPU GEMM kernels (MKL) give a row a different rounding when the number of rows, or a thread's share of them, is
    not a multiple of 4: the same post's visual tokens (5 rows per window) or relation pair came out 1e-7 apart with
    different batch mates. With the row count a multiple of 4 the result of each row was bit-identical for every
    row count and position tried (1 to 4096 rows, 1 to 16 threads; tests/test_batch_invariance.py).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - nn.Linear's
        features = x.shape[-1]
        rows = x.numel() // features if features else 0
        extra = -rows % ROW_ALIGN
        if not extra:
            return super().forward(x)
        flat = x.reshape(rows, features)
        out = super().forward(torch.cat([flat, flat.new_zeros((extra, features))]))
        return out[:rows].reshape(*x.shape[:-1], out.shape[-1])


class FixedImageBatches(nn.Module):
    """Runs a wrapped image backbone on exactly `IMAGE_BATCH` images per call (the last call padded with blank ones).

    Multi-threaded oneDNN convolutions round an image differently depending on how many images share the call, but
    not on where it sits in a call of a fixed size; one image per call would be about 4x slower on CPU.
    """

    def __init__(self, backbone: nn.Module, size: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.size = size or IMAGE_BATCH

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # noqa: D102 - the wrapped backbone's
        out = []
        for start in range(0, pixel_values.size(0), self.size):
            part = pixel_values[start: start + self.size]
            extra = self.size - part.size(0)
            if extra:
                part = torch.cat([part, part.new_zeros((extra, *part.shape[1:]))])
            out.append(self.backbone(part)[: self.size - extra])
        return torch.cat(out)


def make_batch_invariant(model: nn.Module) -> None:
    """Make each row of an inference forward a function of that row alone (with `length_batches` / `_forward`).

    Linear layers become `RowAlignedLinear`, and the image backbone always sees `IMAGE_BATCH` images per call. The
    text encoder's attention and the MMIB attention blocks are row-independent as long as every row of a batch has
    the same padded length (`length_batches`) and a batch has at least two rows (`_forward`). Idempotent; for
    inference only.
    """
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = RowAlignedLinear
    backbone = getattr(model, "image_backbone", None)
    if backbone is not None and not isinstance(backbone, FixedImageBatches):
        model.image_backbone = FixedImageBatches(backbone)


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
