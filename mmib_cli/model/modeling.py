"""MMIB top to bottom: text/image paths, variational bottleneck, alignment discriminator, fusion and task heads.

Shapes use ``B`` batch, ``L`` sub-word pieces, ``N = 1 + g*g`` visual tokens, ``d`` latent size, ``W`` words (NER),
``K`` tags/labels. See docs/ARCHITECTURE.md (model/) and the MMIB digest (sections 2, 3 and 7) for the contract.

Choices where the official code is ambiguous or unclean (digest section 7), all deliberate:

* attention masks hide padded *keys* (the official code masks queries, and nothing in the image-to-text block);
* the KL terms are averaged over valid text tokens x dims and over all visual tokens x dims (padding excluded; the
  learned "no image" tokens are included, which pulls them towards the prior, i.e. towards "no information");
* evaluation uses the bottleneck mean for both tasks (deterministic);
* the frozen image backbone always stays in eval mode (BatchNorm statistics never drift);
* AR negatives are in-batch rolls over the rows that have an image; with ``n`` such rows at most ``n - 1`` distinct
  rolls exist, so ``K`` is capped at ``n - 1``; with fewer than 2 such rows the AR loss is 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmib_cli.model.configuration import MMIBConfig
from mmib_cli.model.crf import LinearChainCRF, bio_transition_mask


@dataclass
class MMIBOutput:
    """Result of ``MMIBModel.forward``.

    Attributes:
        loss: total loss ``task + beta*KL_t + beta*KL_v + beta*AR`` (scalar); None unless labels were given.
        logits: NER word-level emissions ``(B, W, K)`` or RE class logits ``(B, K)``.
        task_loss: CRF NLL (NER) or cross-entropy (RE), scalar; None unless labels were given.
        kl_text: unweighted text KL (scalar tensor, 0 when ``use_kl`` is off).
        kl_image: unweighted image KL (scalar tensor, 0 when ``use_kl`` is off).
        ar_loss: unweighted alignment loss (scalar tensor, 0 when ``use_ar`` is off or < 2 rows have an image).
    """

    loss: Tensor | None
    logits: Tensor
    task_loss: Tensor | None
    kl_text: Tensor
    kl_image: Tensor
    ar_loss: Tensor


@dataclass
class LatentOutput:
    """Variational bottleneck result.

    Attributes:
        z_text: sampled (train) or mean (eval) text latents ``(B, L, d)``.
        z_image: sampled or mean visual latents ``(B, N, d)``.
        mu_text / logvar_text: text posterior mean / log-variance ``(B, L, d)``.
        mu_image / logvar_image: visual posterior mean / log-variance ``(B, N, d)``.
    """

    z_text: Tensor
    z_image: Tensor
    mu_text: Tensor
    logvar_text: Tensor
    mu_image: Tensor
    logvar_image: Tensor


class MultiHeadAttention(nn.Module):
    """Scaled dot-product multi-head attention (Q/K/V projections without bias, output projection with bias).

    Args:
        hidden_size: model width ``d`` (input and output).
        num_heads: heads; must divide ``hidden_size``.
        dropout: dropout on the attention probabilities.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size, bias=False)
        self.key = nn.Linear(hidden_size, hidden_size, bias=False)
        self.value = nn.Linear(hidden_size, hidden_size, bias=False)
        self.output = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """Attend from ``query`` to ``key``/``value``.

        Args:
            query: ``(B, Lq, d)``.
            key: ``(B, Lk, d)``.
            value: ``(B, Lk, d)``.
            key_mask: optional ``(B, Lk)`` bool/0-1; False/0 keys receive no attention.

        Returns:
            ``(B, Lq, d)``.
        """
        q, k, v = self._split(self.query(query)), self._split(self.key(key)), self._split(self.value(value))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if key_mask is not None:
            # A large finite negative (not -inf): a row with every key masked gets uniform weights, never NaN.
            scores = scores.masked_fill(~key_mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = self.dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(probs, v).transpose(1, 2).reshape(query.size(0), query.size(1), -1)
        return self.output(context)


class AttentionBlock(nn.Module):
    """MMIB block: ``P = LayerNorm(Q + MHA(Q, KV, KV))``, ``out = LayerNorm(P + Linear(P))`` (no non-linearity).

    Args:
        hidden_size: width ``d``.
        num_heads: attention heads.
        dropout: attention-probability dropout.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(hidden_size, num_heads, dropout)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)

    def forward(self, query: Tensor, key_value: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """Apply the block.

        Args:
            query: ``(B, Lq, d)``.
            key_value: ``(B, Lk, d)`` (keys and values).
            key_mask: optional ``(B, Lk)``; False keys are ignored.

        Returns:
            ``(B, Lq, d)``.
        """
        hidden = self.norm1(query + self.attention(query, key_value, key_value, key_mask))
        return self.norm2(hidden + self.dense(hidden))


class AlignmentDiscriminator(nn.Module):
    """Scores (text, image) latent pairs for the alignment regularizer; returns logits (pre-sigmoid).

    Args:
        latent_size: ``d``.
        score: ``"concat"`` -> ``Linear([z_t; z_v])`` with ``d`` outputs (one sigmoid per dimension, as the official
            code); ``"bilinear"`` -> ``(z_t^T W z_v + b) / sqrt(d)``, one output.

    Note: the concat logit ``W_t z_t + W_v z_v + b`` is additive, with no text-image interaction, so it cannot
    separate matched from mismatched pairs; its loss cannot go below the pairing-blind optimum (``2 log 2`` for
    ``K = 1``). Only ``"bilinear"`` actually measures alignment, so it is the config default; ``"concat"`` is kept to
    reproduce the official code.

    The bilinear score is scaled by ``1 / sqrt(d)`` (as in scaled dot-product attention): unscaled, its logit grows
    like ``|z_t| |z_v| ~ d`` (the latents have unit-scale means plus unit-scale sampling noise), so at the usual
    ``std=0.02`` init a ``d = 256`` model starts with logits of std ~10 and an AR loss ~20 that swamps the task loss.
    The scale is a reparameterisation of ``W`` (same function class); the discriminator is unused at inference.
    """

    def __init__(self, latent_size: int, score: str = "concat") -> None:
        super().__init__()
        if score not in ("concat", "bilinear"):
            raise ValueError(f"score must be 'concat' or 'bilinear', got {score!r}")
        self.score = score
        self.scale = 1.0 / math.sqrt(latent_size)
        self.scorer: nn.Module
        if score == "concat":
            self.scorer = nn.Linear(2 * latent_size, latent_size)
        else:
            self.scorer = nn.Bilinear(latent_size, latent_size, 1)

    def forward(self, z_text: Tensor, z_image: Tensor) -> Tensor:
        """Pair logits.

        Args:
            z_text: ``(n, d)`` pooled text latents.
            z_image: ``(n, d)`` pooled visual latents.

        Returns:
            ``(n, d)`` for concat, ``(n, 1)`` for bilinear.
        """
        if self.score == "concat":
            return self.scorer(torch.cat([z_text, z_image], dim=-1))
        return self.scorer(z_text, z_image) * self.scale


def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
    """Sample ``z = mu + eps * exp(0.5 * logvar)`` with ``eps ~ N(0, I)``.

    Args:
        mu: posterior mean, any shape.
        logvar: posterior log-variance, same shape.

    Returns:
        A sample, same shape.
    """
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def gaussian_kl(mu: Tensor, logvar: Tensor, mask: Tensor | None = None) -> Tensor:
    """Closed-form ``KL(N(mu, exp(logvar)) || N(0, I))`` averaged over valid tokens and dimensions.

    Args:
        mu: ``(B, L, d)`` mean.
        logvar: ``(B, L, d)`` log-variance.
        mask: optional ``(B, L)``; only True/1 tokens count (all tokens when None).

    Returns:
        Scalar: ``-0.5 * sum(1 + logvar - mu^2 - exp(logvar)) / (n_valid_tokens * d)`` (0 without valid tokens).
    """
    kl = -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())
    if mask is None:
        return kl.mean()
    weights = mask.to(kl.dtype)[:, :, None]
    denominator = (weights.sum() * kl.size(-1)).clamp(min=1.0)
    return (kl * weights).sum() / denominator


class MMIBModel(nn.Module):
    """MMIB for one task (NER or RE) on a text encoder and an optional image backbone.

    Args:
        config: the model's ``MMIBConfig``.
        text_encoder: module called as ``text_encoder(input_ids=, attention_mask=)`` whose result has
            ``.last_hidden_state (B, L, hidden_size)``; fine-tuned with the rest.
        image_backbone: module mapping ``pixel_values (B, 3, S, S)`` to a grid ``(B, image_feature_dim, h, w)``, or
            None (every row then uses the learned "no image" tokens). Frozen when ``config.freeze_image_backbone``.

    Submodules ``text_encoder`` and ``image_backbone`` keep exactly these names (checkpoint code uses the prefixes).
    """

    def __init__(self, config: MMIBConfig, text_encoder: nn.Module, image_backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.text_encoder = text_encoder
        self.image_backbone = image_backbone
        d = config.latent_size
        heads, attn_drop = config.num_attention_heads, config.attention_dropout
        # text path
        self.word_shape_embedding = (
            nn.Embedding(config.num_word_shapes, config.hidden_size, padding_idx=0) if config.use_word_shape else None
        )
        self.dropout = nn.Dropout(config.dropout)
        self.text_projection = nn.Linear(config.hidden_size, d)
        # image path (always built, so the state dict does not depend on whether a backbone is attached)
        self.image_projection = nn.Linear(config.image_feature_dim, d)
        self.no_image_tokens = nn.Parameter(torch.empty(config.num_image_tokens, d))
        # variational bottleneck
        self.txt_mean = AttentionBlock(d, heads, attn_drop)
        self.txt_logvar = AttentionBlock(d, heads, attn_drop)
        self.img_mean = AttentionBlock(d, heads, attn_drop)
        self.img_logvar = AttentionBlock(d, heads, attn_drop)
        self.discriminator = AlignmentDiscriminator(d, config.ar_score)
        # fusion
        self.img2txt = AttentionBlock(d, heads, attn_drop)
        self.txt2img = AttentionBlock(d, heads, attn_drop)
        # task head
        self.crf: LinearChainCRF | None = None
        if config.task == "ner":
            self.classifier = nn.Linear(d, config.num_labels)
            self.crf = LinearChainCRF(
                config.num_labels, batch_first=True, allowed_transitions=bio_transition_mask(config.labels)
            )
        else:
            self.classifier = nn.Linear(2 * d, config.num_labels)
        if image_backbone is not None and config.freeze_image_backbone:
            image_backbone.requires_grad_(False)
            image_backbone.eval()
        self._init_weights()

    # ------------------------------------------------------------------ setup
    def _init_weights(self) -> None:
        """Initialise every layer MMIB adds (never the text encoder or the image backbone).

        Linear/Bilinear: normal(0, 0.02) weights, zero bias; LayerNorm: ones/zeros; word-shape embedding:
        normal(0, 0.02) with a zero padding row; "no image" tokens: normal(0, 0.02); CRF: its own uniform init.
        """
        for name, child in self.named_children():
            if name in ("text_encoder", "image_backbone"):
                continue
            for module in child.modules():
                if isinstance(module, (nn.Linear, nn.Bilinear)):
                    nn.init.normal_(module.weight, mean=0.0, std=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.LayerNorm):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
                elif isinstance(module, nn.Embedding):
                    nn.init.normal_(module.weight, mean=0.0, std=0.02)
                    if module.padding_idx is not None:
                        with torch.no_grad():
                            module.weight[module.padding_idx].zero_()
                elif isinstance(module, LinearChainCRF):
                    module.reset_parameters()
        nn.init.normal_(self.no_image_tokens, mean=0.0, std=0.02)

    def train(self, mode: bool = True) -> MMIBModel:
        """Set train/eval mode; a frozen image backbone always stays in eval mode.

        Args:
            mode: True for training mode.

        Returns:
            self.
        """
        super().train(mode)
        if self.image_backbone is not None and self.config.freeze_image_backbone:
            self.image_backbone.eval()
        return self

    @property
    def uses_images(self) -> bool:
        """Whether the image path can run (``config.use_image`` and a backbone is attached)."""
        return self.config.use_image and self.image_backbone is not None

    # ------------------------------------------------------------------ paths
    def encode_text(self, input_ids: Tensor, attention_mask: Tensor, word_shape_ids: Tensor | None = None) -> Tensor:
        """Text path: encoder states (+ word-shape embedding), dropout, projection to the latent width.

        Args:
            input_ids: ``(B, L)`` long.
            attention_mask: ``(B, L)`` 0/1 or bool.
            word_shape_ids: optional ``(B, L)`` long in ``[0, num_word_shapes)``, 0 for special/pad pieces.

        Returns:
            ``(B, L, d)`` text features ``H^T``.
        """
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.word_shape_embedding is not None and word_shape_ids is not None:
            hidden = hidden + self.word_shape_embedding(word_shape_ids).to(hidden.dtype)
        hidden = self.dropout(hidden)
        return self.text_projection(hidden.to(self.text_projection.weight.dtype))

    def _image_features(self, pixel_values: Tensor) -> Tensor:
        """Run the backbone and pool its grid into ``(n, N, C)`` visual tokens (global first, then g*g regions)."""
        assert self.image_backbone is not None
        if self.config.freeze_image_backbone:
            with torch.no_grad():
                grid = self.image_backbone(pixel_values)
            grid = grid.detach()
        else:
            grid = self.image_backbone(pixel_values)
        if grid.dim() == 2:  # a pooled backbone: treat (n, C) as a 1 x 1 grid
            grid = grid[:, :, None, None]
        if grid.dim() != 4 or grid.size(1) != self.config.image_feature_dim:
            raise ValueError(
                f"image backbone must return (B, {self.config.image_feature_dim}, h, w), got {tuple(grid.shape)}"
            )
        g = self.config.image_grid
        global_token = grid.mean(dim=(2, 3))[:, None, :]
        regions = F.adaptive_avg_pool2d(grid, g).flatten(2).transpose(1, 2)
        return torch.cat([global_token, regions], dim=1)

    def visual_tokens(self, pixel_values: Tensor) -> Tensor:
        """Projected visual tokens ``(n, N, d)`` of ``n`` images ``(n, 3, S, S)`` (backbone, grid pooling, projection)."""
        backbone_param = next(iter(self.image_backbone.parameters()), None)  # type: ignore[union-attr]
        if backbone_param is not None:
            pixel_values = pixel_values.to(device=backbone_param.device, dtype=backbone_param.dtype)
        features = self._image_features(pixel_values)
        return self.image_projection(features.to(self.image_projection.weight.dtype))

    def encode_image(
        self, pixel_values: Tensor | None, image_present: Tensor | None, batch_size: int,
        image_tokens: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Image path: visual tokens ``H^V`` with learned "no image" tokens for rows without an image.

        Args:
            pixel_values: ``(B, 3, S, S)`` float or None.
            image_present: ``(B,)`` bool or None (None with an image input means every row has an image).
            batch_size: ``B`` (needed when there is no image input).
            image_tokens: ``(B, N, d)`` tokens already made by `visual_tokens`, used instead of ``pixel_values``.

        Returns:
            ``(tokens (B, N, d), has_image (B,) bool)``; ``has_image`` is False for every row whose tokens are the
            learned "no image" tokens.
        """
        device = self.no_image_tokens.device
        no_image = self.no_image_tokens[None].expand(batch_size, -1, -1)
        source = image_tokens if image_tokens is not None else pixel_values
        if source is None or not self.uses_images:
            return no_image, torch.zeros(batch_size, dtype=torch.bool, device=device)
        if source.size(0) != batch_size:
            raise ValueError(f"the image input has {source.size(0)} rows, expected {batch_size}")
        if image_present is None:
            has_image = torch.ones(batch_size, dtype=torch.bool, device=device)
        else:
            has_image = image_present.to(device=device, dtype=torch.bool).reshape(batch_size)
        if not bool(has_image.any()):
            return no_image, has_image
        index = has_image.nonzero(as_tuple=True)[0]
        projected = image_tokens[index] if image_tokens is not None else self.visual_tokens(pixel_values[index])
        tokens = no_image.clone()
        tokens[index] = projected.to(tokens.dtype)
        return tokens, has_image

    def bottleneck(self, text: Tensor, text_mask: Tensor, image: Tensor) -> LatentOutput:
        """Variational bottleneck: attention blocks give mean and log-variance; sample in training, mean in eval.

        Args:
            text: ``(B, L, d)`` text features.
            text_mask: ``(B, L)`` bool, True for real pieces.
            image: ``(B, N, d)`` visual tokens.

        Returns:
            A ``LatentOutput``.
        """
        mu_t = self.txt_mean(text, text, text_mask)
        logvar_t = self.txt_logvar(text, text, text_mask)
        mu_v = self.img_mean(image, image)
        logvar_v = self.img_logvar(image, image)
        if self.training:
            z_t, z_v = reparameterize(mu_t, logvar_t), reparameterize(mu_v, logvar_v)
        else:
            z_t, z_v = mu_t, mu_v
        return LatentOutput(z_t, z_v, mu_t, logvar_t, mu_v, logvar_v)

    def alignment_loss(self, z_text: Tensor, z_image: Tensor, has_image: Tensor) -> Tensor:
        """Alignment regularizer: BCE of the discriminator on matched vs in-batch rolled (text, image) pairs.

        Args:
            z_text: ``(B, L, d)`` text latents (the ``[CLS]`` latent, position 0, is pooled).
            z_image: ``(B, N, d)`` visual latents (the global token, position 0, is pooled).
            has_image: ``(B,)`` bool; only these rows take part.

        Returns:
            Scalar ``BCE(D(t, v), 1) + sum_k BCE(D(t, roll_k v), 0)``, ``k = 1..min(K, n - 1)``; 0 when ``n < 2``.
        """
        index = has_image.nonzero(as_tuple=True)[0]
        n = int(index.numel())
        if n < 2:
            return z_text.new_zeros(())
        pooled_t, pooled_v = z_text[index, 0], z_image[index, 0]
        positive = self.discriminator(pooled_t, pooled_v)
        loss = F.binary_cross_entropy_with_logits(positive, torch.ones_like(positive))
        for shift in range(1, min(self.config.ar_negatives, n - 1) + 1):
            negative = self.discriminator(pooled_t, torch.roll(pooled_v, shifts=shift, dims=0))
            loss = loss + F.binary_cross_entropy_with_logits(negative, torch.zeros_like(negative))
        return loss

    def fuse(self, z_text: Tensor, text_mask: Tensor, z_image: Tensor) -> Tensor:
        """Cross-modal fusion: image tokens attend to text, then text attends to the text-aware image tokens.

        Args:
            z_text: ``(B, L, d)``.
            text_mask: ``(B, L)`` bool.
            z_image: ``(B, N, d)``.

        Returns:
            ``(B, L, d)`` fused token features ``F``.
        """
        context = self.img2txt(z_image, z_text, text_mask)
        return self.txt2img(z_text, context)

    # ------------------------------------------------------------------ heads
    def _ner_head(
        self, fused: Tensor, word_index: Tensor | None, word_mask: Tensor | None, labels: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        if word_index is None or word_mask is None:
            raise ValueError("task 'ner' needs word_index (B, W) and word_mask (B, W)")
        word_mask = word_mask.bool()
        safe_index = word_index.long().masked_fill(~word_mask, 0)
        words = fused.gather(1, safe_index[:, :, None].expand(-1, -1, fused.size(-1)))
        emissions = self.classifier(self.dropout(words))
        if labels is None:
            return emissions, None
        assert self.crf is not None
        return emissions, self.crf.neg_log_likelihood(emissions, labels, word_mask, reduction="mean")

    def _re_head(
        self, fused: Tensor, head_index: Tensor | None, tail_index: Tensor | None, labels: Tensor | None,
        label_weights: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        if head_index is None or tail_index is None:
            raise ValueError("task 're' needs head_index (B,) and tail_index (B,)")
        rows = torch.arange(fused.size(0), device=fused.device)
        pair = torch.cat([fused[rows, head_index.long()], fused[rows, tail_index.long()]], dim=-1)
        logits = self.classifier(pair)
        if labels is None:
            return logits, None
        if label_weights is None:
            return logits, F.cross_entropy(logits.float(), labels.long(), reduction=self.config.re_loss_reduction)
        weights = label_weights.to(logits.device, torch.float)
        loss = (F.cross_entropy(logits.float(), labels.long(), reduction="none") * weights).sum()
        if self.config.re_loss_reduction == "mean":
            loss = loss / weights.sum().clamp_min(1e-8)
        return logits, loss

    # ------------------------------------------------------------------ forward / decode
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        word_shape_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_present: Tensor | None = None,
        word_index: Tensor | None = None,
        word_mask: Tensor | None = None,
        head_index: Tensor | None = None,
        tail_index: Tensor | None = None,
        labels: Tensor | None = None,
        image_tokens: Tensor | None = None,
        label_weights: Tensor | None = None,
    ) -> MMIBOutput:
        """Run MMIB on a batch (the dict of ``Featurizer.collate`` plus images).

        Args:
            input_ids: ``(B, L)`` long piece ids.
            attention_mask: ``(B, L)`` 0/1 (or bool).
            word_shape_ids: optional ``(B, L)`` long word-shape ids (0 = special/pad).
            pixel_values: optional ``(B, 3, S, S)`` float images (zeros where absent).
            image_present: optional ``(B,)`` bool; rows with False use the learned "no image" tokens.
            word_index: NER ``(B, W)`` long: piece position of the first piece of each word.
            word_mask: NER ``(B, W)`` bool prefix mask of real words.
            head_index: RE ``(B,)`` long: position of the head start marker.
            tail_index: RE ``(B,)`` long: position of the tail start marker.
            labels: NER ``(B, W)`` tag ids (0 where masked) or RE ``(B,)`` label ids; enables the losses.
            image_tokens: optional ``(B, N, d)`` visual tokens from `visual_tokens`, instead of ``pixel_values``.
            label_weights: optional RE ``(B,)`` weight of each row's loss (the weighted mean when the reduction is
                ``"mean"``); all 1 when absent.

        Returns:
            ``MMIBOutput``; ``loss`` and ``task_loss`` only when ``labels`` is given.

        Raises:
            ValueError: when the task's index tensors are missing or the backbone output has the wrong shape.
        """
        text_mask = attention_mask.bool()
        text = self.encode_text(input_ids, attention_mask, word_shape_ids)
        image, has_image = self.encode_image(pixel_values, image_present, input_ids.size(0), image_tokens)
        latent = self.bottleneck(text, text_mask, image.to(text.dtype))
        zero = text.new_zeros(())
        if self.config.use_kl:
            kl_text = gaussian_kl(latent.mu_text, latent.logvar_text, text_mask)
            kl_image = gaussian_kl(latent.mu_image, latent.logvar_image)
        else:
            kl_text = kl_image = zero
        ar_loss = self.alignment_loss(latent.z_text, latent.z_image, has_image) if self.config.use_ar else zero
        fused = self.fuse(latent.z_text, text_mask, latent.z_image)
        if self.config.task == "ner":
            logits, task_loss = self._ner_head(fused, word_index, word_mask, labels)
        else:
            logits, task_loss = self._re_head(fused, head_index, tail_index, labels, label_weights)
        loss = None
        if task_loss is not None:
            loss = task_loss
            if self.config.use_kl:
                loss = loss + self.config.beta_kl_text * kl_text + self.config.beta_kl_image * kl_image
            if self.config.use_ar:
                loss = loss + self.config.beta_ar * ar_loss
        return MMIBOutput(loss, logits, task_loss, kl_text, kl_image, ar_loss)

    @torch.no_grad()
    def decode(self, emissions: Tensor, word_mask: Tensor) -> tuple[list[list[int]], Tensor]:
        """Decode NER emissions with the constrained CRF.

        Args:
            emissions: ``(B, W, K)`` word-level emissions (``MMIBOutput.logits``, possibly merged across windows).
            word_mask: ``(B, W)`` bool prefix mask of real words.

        Returns:
            ``(tags, marginals)``: Viterbi tag ids per row (length = number of words) and the CRF posterior
            marginals ``(B, W, K)`` float32 (0 at masked words), e.g. for entity scores.

        Raises:
            ValueError: if the model is not an NER model.
        """
        if self.crf is None:
            raise ValueError(f"decode is only available for task 'ner', this model's task is {self.config.task!r}")
        word_mask = word_mask.bool()
        return self.crf.decode(emissions, word_mask), self.crf.marginals(emissions, word_mask)
