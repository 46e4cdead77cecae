"""A vectorised linear-chain CRF: negative log-likelihood, Viterbi decoding and forward-backward marginals.

Sequences have variable lengths given by a prefix mask: ``mask[b, :n_b]`` is True and the rest False. All dynamic
programmes run over time in a Python loop and are vectorised over batch and tags, in log space (``logsumexp``).
Half-precision emissions are promoted to float32 inside the layer.

Optional hard constraints (e.g. BIO well-formedness) are given as a boolean mask of allowed transitions; a forbidden
transition gets a large finite penalty (``FORBIDDEN_SCORE``) in every computation, so scores, partition function,
decoding and marginals stay mutually consistent and free of NaNs.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

FORBIDDEN_SCORE = -10000.0
"""Score added to a forbidden transition (finite, so log-space sums never produce NaN)."""


def bio_transition_mask(labels: Sequence[str]) -> Tensor:
    """Build the allowed-transition mask of a BIO tag set.

    Forbidden: ``O -> I-x``, ``B-x -> I-y`` and ``I-x -> I-y`` for ``y != x``, and ``<start> -> I-x``. Everything else
    is allowed (any tag may end a sequence).

    Args:
        labels: tags in id order, each ``"O"``, ``"B-<type>"`` or ``"I-<type>"``.

    Returns:
        Bool tensor ``(K + 1, K)``: row ``i < K`` says which tags may follow tag ``i``; row ``K`` says which tags may
        start a sequence.

    Raises:
        ValueError: if a label is not a BIO tag.
    """
    parsed: list[tuple[str, str]] = []
    for label in labels:
        if label == "O":
            parsed.append(("O", ""))
        elif len(label) > 2 and label[:2] in ("B-", "I-"):
            parsed.append((label[0], label[2:]))
        else:
            raise ValueError(f"label {label!r} is not a BIO tag ('O', 'B-<type>' or 'I-<type>')")
    num_tags = len(parsed)
    allowed = torch.ones(num_tags + 1, num_tags, dtype=torch.bool)
    for j, (prefix_j, type_j) in enumerate(parsed):
        if prefix_j != "I":
            continue
        allowed[num_tags, j] = False  # <start> -> I-x
        for i, (prefix_i, type_i) in enumerate(parsed):
            if prefix_i == "O" or type_i != type_j:
                allowed[i, j] = False  # O -> I-x, B-y/I-y -> I-x
    return allowed


class LinearChainCRF(nn.Module):
    """Linear-chain conditional random field over ``num_tags`` tags with learned start/end/transition scores.

    The score of a tag path ``y_1..y_n`` is ``start[y_1] + sum_t emit[t, y_t] + sum_t trans[y_{t-1}, y_t] + end[y_n]``
    (plus ``FORBIDDEN_SCORE`` for each forbidden start/transition when constraints are given).

    Args:
        num_tags: number of tags ``K``.
        batch_first: inputs are ``(B, T, ...)`` when True, ``(T, B, ...)`` when False.
        allowed_transitions: optional bool mask, ``(K, K)`` (row = previous tag, column = next tag) or ``(K + 1, K)``
            whose last row holds the allowed start tags (as ``bio_transition_mask`` returns). Stored as a buffer.

    Raises:
        ValueError: if ``num_tags < 1`` or the mask has the wrong shape.
    """

    def __init__(self, num_tags: int, batch_first: bool = True, allowed_transitions: Tensor | None = None) -> None:
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be >= 1, got {num_tags}")
        self.num_tags = num_tags
        self.batch_first = batch_first
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        start_penalty = torch.zeros(num_tags)
        transition_penalty = torch.zeros(num_tags, num_tags)
        if allowed_transitions is not None:
            allowed = torch.as_tensor(allowed_transitions, dtype=torch.bool)
            if allowed.shape not in ((num_tags, num_tags), (num_tags + 1, num_tags)):
                raise ValueError(
                    f"allowed_transitions must have shape ({num_tags}, {num_tags}) or ({num_tags + 1}, {num_tags}), "
                    f"got {tuple(allowed.shape)}"
                )
            transition_penalty = torch.where(allowed[:num_tags], 0.0, FORBIDDEN_SCORE)
            if allowed.shape[0] == num_tags + 1:
                start_penalty = torch.where(allowed[num_tags], 0.0, FORBIDDEN_SCORE)
        # Constraint penalties are constants (buffers); they travel with the module and are saved with it.
        self.register_buffer("start_penalty", start_penalty)
        self.register_buffer("transition_penalty", transition_penalty)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise start/end/transition scores uniformly in [-0.1, 0.1] (as pytorch-crf)."""
        nn.init.uniform_(self.start_transitions, -0.1, 0.1)
        nn.init.uniform_(self.end_transitions, -0.1, 0.1)
        nn.init.uniform_(self.transitions, -0.1, 0.1)

    def extra_repr(self) -> str:
        constrained = bool((self.transition_penalty != 0).any() or (self.start_penalty != 0).any())
        return f"num_tags={self.num_tags}, batch_first={self.batch_first}, constrained={constrained}"

    # ------------------------------------------------------------------ helpers
    def _prepare(self, emissions: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Validate inputs; return batch-first float emissions ``(B,T,K)``, bool mask ``(B,T)``, lengths ``(B,)``."""
        if emissions.dim() != 3 or emissions.size(-1) != self.num_tags:
            raise ValueError(
                f"emissions must have shape (B, T, {self.num_tags}) (batch_first) , got {tuple(emissions.shape)}"
            )
        if not self.batch_first:
            emissions = emissions.transpose(0, 1)
            mask = mask.transpose(0, 1) if mask is not None else None
        if emissions.dtype not in (torch.float32, torch.float64):
            emissions = emissions.float()
        batch, steps, _ = emissions.shape
        if mask is None:
            mask = torch.ones(batch, steps, dtype=torch.bool, device=emissions.device)
        mask = mask.to(device=emissions.device, dtype=torch.bool)
        if mask.shape != (batch, steps):
            raise ValueError(f"mask must have shape {(batch, steps)}, got {tuple(mask.shape)}")
        lengths = mask.sum(dim=1)
        positions = torch.arange(steps, device=mask.device)
        if not torch.equal(mask, positions[None, :] < lengths[:, None]):
            raise ValueError("mask must be in prefix form: True for the first n_b steps of row b, then False")
        return emissions, mask, lengths

    def _scores(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Return constrained start ``(K,)``, transition ``(K,K)`` and end ``(K,)`` scores in ``dtype``."""
        start = (self.start_transitions + self.start_penalty).to(dtype)
        trans = (self.transitions + self.transition_penalty).to(dtype)
        return start, trans, self.end_transitions.to(dtype)

    def _forward_alphas(self, emissions: Tensor, mask: Tensor, start: Tensor, trans: Tensor) -> Tensor:
        """Forward algorithm; returns log alphas ``(B,T,K)`` (frozen past each row's last valid step)."""
        alpha = start[None, :] + emissions[:, 0]
        alphas = [alpha]
        for t in range(1, emissions.size(1)):
            nxt = torch.logsumexp(alpha[:, :, None] + trans[None, :, :], dim=1) + emissions[:, t]
            alpha = torch.where(mask[:, t, None], nxt, alpha)
            alphas.append(alpha)
        return torch.stack(alphas, dim=1)

    # ------------------------------------------------------------------ public API
    def log_partition(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Log partition function ``log Z`` of every sequence.

        Args:
            emissions: ``(B, T, K)`` unary scores (``(T, B, K)`` when not batch_first).
            mask: ``(B, T)`` bool prefix mask (``(T, B)`` when not batch_first); None means all steps valid.

        Returns:
            ``(B,)``; 0 for empty sequences.
        """
        emissions, mask, lengths = self._prepare(emissions, mask)
        if emissions.size(1) == 0:
            return emissions.new_zeros(emissions.size(0))
        start, trans, end = self._scores(emissions.dtype)
        alpha = self._forward_alphas(emissions, mask, start, trans)[:, -1]
        log_z = torch.logsumexp(alpha + end[None, :], dim=1)
        return torch.where(lengths > 0, log_z, torch.zeros_like(log_z))

    def score(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """Unnormalised score of the given tag paths.

        Args:
            emissions: ``(B, T, K)`` unary scores.
            tags: ``(B, T)`` long tag ids (values at masked steps are ignored).
            mask: ``(B, T)`` bool prefix mask; None means all steps valid.

        Returns:
            ``(B,)`` path scores; 0 for empty sequences.
        """
        if not self.batch_first:
            tags = tags.transpose(0, 1)
        emissions, mask, lengths = self._prepare(emissions, mask)
        if tags.shape != mask.shape:
            raise ValueError(f"tags must have shape {tuple(mask.shape)}, got {tuple(tags.shape)}")
        batch, steps, _ = emissions.shape
        if steps == 0:
            return emissions.new_zeros(batch)
        start, trans, end = self._scores(emissions.dtype)
        tags = tags.to(emissions.device).long().masked_fill(~mask, 0)
        weights = mask.to(emissions.dtype)
        total = (emissions.gather(2, tags[:, :, None]).squeeze(2) * weights).sum(dim=1)
        total = total + trans[tags[:, :-1], tags[:, 1:]].mul(weights[:, 1:]).sum(dim=1)
        last = tags.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
        total = total + start[tags[:, 0]] + end[last]
        return torch.where(lengths > 0, total, torch.zeros_like(total))

    def neg_log_likelihood(
        self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None, reduction: str = "mean"
    ) -> Tensor:
        """Negative log-likelihood ``log Z - score(tags)`` of the gold tag paths.

        A gold path with a forbidden transition gets a huge but finite loss (its gradient stays bounded); data
        readers are expected to repair such paths (e.g. an ``I-x`` after ``O`` becomes ``B-x``).

        Args:
            emissions: ``(B, T, K)`` unary scores.
            tags: ``(B, T)`` gold tag ids (values at masked steps are ignored).
            mask: ``(B, T)`` bool prefix mask; None means all steps valid.
            reduction: ``"none"`` (``(B,)``), ``"sum"``, ``"mean"`` (over non-empty sequences) or ``"token_mean"``
                (sum divided by the number of valid steps).

        Returns:
            The reduced loss (scalar), or ``(B,)`` with ``reduction="none"``.

        Raises:
            ValueError: for an unknown reduction or malformed inputs.
        """
        if reduction not in ("none", "sum", "mean", "token_mean"):
            raise ValueError(f"reduction must be 'none', 'sum', 'mean' or 'token_mean', got {reduction!r}")
        nll = self.log_partition(emissions, mask) - self.score(emissions, tags, mask)
        if reduction == "none":
            return nll
        if reduction == "sum":
            return nll.sum()
        if mask is None:
            lengths = torch.full_like(nll, emissions.size(1 if self.batch_first else 0))
        else:
            lengths = mask.to(nll.device).sum(dim=1 if self.batch_first else 0).to(nll.dtype)
        if reduction == "mean":
            return nll.sum() / (lengths > 0).sum().clamp(min=1)
        return nll.sum() / lengths.sum().clamp(min=1)

    def forward(
        self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None, reduction: str = "mean"
    ) -> Tensor:
        """Alias of ``neg_log_likelihood`` (so the layer can be called like a loss)."""
        return self.neg_log_likelihood(emissions, tags, mask, reduction)

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor | None = None) -> list[list[int]]:
        """Viterbi decoding: the highest-scoring tag path of every sequence.

        Args:
            emissions: ``(B, T, K)`` unary scores.
            mask: ``(B, T)`` bool prefix mask; None means all steps valid.

        Returns:
            ``B`` lists of tag ids, each as long as its sequence (empty for empty sequences).
        """
        emissions, mask, lengths = self._prepare(emissions, mask)
        batch, steps, _ = emissions.shape
        if steps == 0:
            return [[] for _ in range(batch)]
        start, trans, end = self._scores(emissions.dtype)
        score = start[None, :] + emissions[:, 0]
        history = [torch.zeros_like(score, dtype=torch.long)]  # history[t][b, j]: best previous tag for j at t
        for t in range(1, steps):
            best, index = (score[:, :, None] + trans[None, :, :]).max(dim=1)
            score = torch.where(mask[:, t, None], best + emissions[:, t], score)
            history.append(index)
        best_last = (score + end[None, :]).argmax(dim=1)
        last_pos = lengths - 1
        tags = torch.zeros(batch, steps, dtype=torch.long, device=emissions.device)
        current = best_last
        for t in range(steps - 1, -1, -1):
            if t + 1 < steps:
                previous = history[t + 1].gather(1, current[:, None]).squeeze(1)
                current = torch.where(t < last_pos, previous, current)
            current = torch.where(t == last_pos, best_last, current)
            tags[:, t] = current
        tag_lists = tags.tolist()
        return [row[:n] for row, n in zip(tag_lists, lengths.tolist())]

    def marginals(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Posterior tag marginals ``p(y_t = k | x)`` by forward-backward.

        Args:
            emissions: ``(B, T, K)`` unary scores.
            mask: ``(B, T)`` bool prefix mask; None means all steps valid.

        Returns:
            ``(B, T, K)`` probabilities (``(T, B, K)`` when not batch_first); rows sum to 1 at valid steps and are 0
            at masked steps.
        """
        emissions, mask, _ = self._prepare(emissions, mask)
        batch, steps, num_tags = emissions.shape
        if steps == 0:
            out = emissions.new_zeros(batch, steps, num_tags)
            return out if self.batch_first else out.transpose(0, 1)
        start, trans, end = self._scores(emissions.dtype)
        alphas = self._forward_alphas(emissions, mask, start, trans)
        beta = end[None, :].expand(batch, num_tags)
        betas = [beta]
        for t in range(steps - 2, -1, -1):
            nxt = torch.logsumexp(trans[None, :, :] + (emissions[:, t + 1] + beta)[:, None, :], dim=2)
            beta = torch.where(mask[:, t + 1, None], nxt, end[None, :].expand(batch, num_tags))
            betas.append(beta)
        betas_t = torch.stack(betas[::-1], dim=1)
        log_z = torch.logsumexp(alphas[:, -1] + end[None, :], dim=1)
        probs = torch.exp(alphas + betas_t - log_z[:, None, None]) * mask[:, :, None].to(emissions.dtype)
        return probs if self.batch_first else probs.transpose(0, 1)
