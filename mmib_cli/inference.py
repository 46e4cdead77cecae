"""Batched forward passes shared by the annotation pipeline, evaluation and training-time validation.

Input is already featurised; output is plain python per post. Everything runs under `torch.inference_mode`.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from mmib_cli.features import Window, merge_window_emissions


@dataclass
class NERPrediction:
    """Word-level tags (label strings) and the probability of each predicted tag."""

    tags: list[str]
    tag_scores: list[float]


def length_batches(windows: Sequence[Window], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices of `windows` grouped into batches of similar length (sorted, then cut by size and padded tokens)."""
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].input_ids))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        length = len(windows[i].input_ids)
        if current and (len(current) >= batch_size or length * (len(current) + 1) > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _images_for(rows: Sequence[Window], pixel_values: torch.Tensor | None,
                image_present: torch.Tensor | None, device: torch.device) -> dict[str, torch.Tensor]:
    if pixel_values is None or image_present is None or not bool(image_present.any()):
        return {}
    posts = torch.tensor([w.post for w in rows], dtype=torch.long)
    return {"pixel_values": pixel_values[posts].to(device, non_blocking=True),
            "image_present": image_present[posts].to(device)}


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "labels"}


@torch.inference_mode()
def predict_ner(loaded, windows_per_post: Sequence[Sequence[Window]], *, batch_size: int = 32,
                max_tokens: int = 8192, pixel_values: torch.Tensor | None = None,
                image_present: torch.Tensor | None = None) -> list[NERPrediction]:
    """Tag every word of every post (windows from `Featurizer.encode_ner`, `post` = index into pixel_values)."""
    model, featurizer = loaded.model, loaded.featurizer
    device = next(model.parameters()).device
    labels = model.config.labels
    flat = [w for windows in windows_per_post for w in windows]
    rows_out: list[torch.Tensor | None] = [None] * len(flat)
    for idx in length_batches(flat, batch_size, max_tokens):
        rows = [flat[i] for i in idx]
        batch = _to(featurizer.collate(rows, "ner"), device)
        batch.update(_images_for(rows, pixel_values, image_present, device))
        emissions = model(**batch).logits.float().cpu()
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
def predict_re(loaded, windows: Sequence[Window], *, batch_size: int = 32, max_tokens: int = 8192,
               pixel_values: torch.Tensor | None = None,
               image_present: torch.Tensor | None = None) -> torch.Tensor:
    """Relation probabilities `(len(windows), num_labels)` for windows from `Featurizer.encode_re_batch`."""
    model, featurizer = loaded.model, loaded.featurizer
    device = next(model.parameters()).device
    probs = torch.zeros((len(windows), len(model.config.labels)))
    for idx in length_batches(windows, batch_size, max_tokens):
        rows = [windows[i] for i in idx]
        batch = _to(featurizer.collate(rows, "re"), device)
        batch.update(_images_for(rows, pixel_values, image_present, device))
        logits = model(**batch).logits.float()
        probs[torch.tensor(idx)] = torch.softmax(logits, dim=-1).cpu()
    return probs
