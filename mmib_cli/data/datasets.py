"""Labelled examples → featurised windows (+ image paths), and the torch Dataset/collate used by training."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from mmib_cli.features import Featurizer, Window

logger = logging.getLogger(__name__)


@dataclass
class Examples:
    """Featurised examples of one split: windows, per-window image path (or None), and gold labels per post."""

    task: str
    windows: list[Window]  # NER: all windows of all posts (window.post = post index); RE: one per instance
    windows_per_post: list[list[Window]]
    image_paths: list[Path | None]  # per post
    gold: list[Any]  # NER: tag lists; RE: relation strings

    @property
    def images_found(self) -> int:
        return sum(p is not None for p in self.image_paths)


def read_examples(task: str, files: Sequence[str | Path], featurizer: Featurizer, labels: list[str], *,
                  images: str | Path | None = None, limit: int | None = None,
                  reverse_pairs: bool = False, reverse_pairs_weight: float = 1.0,
                  lowercase_copies: bool = False, mention_swaps: bool = False, seed: int = 0) -> Examples:
    """Read CoNLL (ner) or MNRE (re) files, featurise them with gold labels, and locate images in `images`.

    `reverse_pairs` (RE only) appends `mnre.reversed_pairs` of the (limited) instances; the reversed pairs that
    become `None` weigh `reverse_pairs_weight` in the loss (`Window.weight`). NER only: `lowercase_copies`
    appends a lowercased copy of every (limited) sentence (`augment.lowercased`), `mention_swaps` a copy with each
    entity mention replaced by a random one of its type (`augment.mention_swapped`, seeded by `seed`).
    """
    label_id = {label: i for i, label in enumerate(labels)}
    if task == "ner":
        from mmib_cli.data.augment import lowercased, mention_swapped
        from mmib_cli.data.conll import image_path, read_conll

        sentences = [s for f in files for s in read_conll(f)][:limit]
        copies = []
        if lowercase_copies:
            copies += lowercased(sentences)
            logger.info("%d lowercased copies added", len(sentences))
        if mention_swaps:
            copies += mention_swapped(sentences, seed=seed)
            logger.info("%d copies with swapped mentions added (seed %d)", len(sentences), seed)
        sentences += copies
        windows_per_post = featurizer.encode_ner([s.words for s in sentences],
                                                 [[label_id[t] for t in s.tags] for s in sentences])
        paths = [image_path(s, images) if images else None for s in sentences]
        gold: list[Any] = [s.tags for s in sentences]
    else:
        from mmib_cli.data.mnre import image_path, read_mnre, reversed_pairs

        instances = [x for f in files for x in read_mnre(f)][:limit]
        annotated = len(instances)
        if reverse_pairs:
            added = reversed_pairs(instances)
            logger.info("%d reversed pairs added (%d of them None, weight %g)", len(added),
                        sum(x.relation == "None" for x in added), reverse_pairs_weight)
            instances += added
        windows = featurizer.encode_re_batch([(x.words, x.head, x.tail) for x in instances],
                                             [label_id[x.relation] for x in instances])
        for window, instance in zip(windows[annotated:], instances[annotated:]):
            if instance.relation == "None":
                window.weight = reverse_pairs_weight
        windows_per_post = [[w] for w in windows]
        paths = [image_path(x, images) if images else None for x in instances]
        gold = [x.relation for x in instances]
    flat = [w for ws in windows_per_post for w in ws]
    examples = Examples(task, flat, windows_per_post, paths, gold)
    if images:
        logger.info("%s: %d/%d posts have an image in %s", ", ".join(map(str, files)), examples.images_found,
                    len(paths), images)
    return examples


class WindowDataset(Dataset):
    """Training rows: a window plus its decoded image (decoded in DataLoader workers)."""

    def __init__(self, examples: Examples, image_info: Any | None) -> None:
        self.examples = examples
        self.image_info = image_info

    def __len__(self) -> int:
        return len(self.examples.windows)

    def __getitem__(self, i: int) -> tuple[Window, torch.Tensor | None]:
        window = self.examples.windows[i]
        return window, try_load_image(self.examples.image_paths[window.post], self.image_info)


def try_load_image(path: Path | None, image_info: Any | None) -> torch.Tensor | None:
    """Decode a labelled example's image, or None when it has none or it is unusable (that row goes text-only)."""
    if path is None or image_info is None:
        return None
    from mmib_cli.io.images import ImageError, load_image

    try:
        return load_image(path, image_size=image_info.image_size, mean=image_info.mean, std=image_info.std)
    except ImageError as exc:
        logger.debug("image %s unusable: %s", path, exc)
        return None


def make_collate(featurizer: Featurizer, task: str, image_size: int | None):
    """Collate function for WindowDataset rows: padded text tensors + pixel_values/image_present."""

    def collate(rows: list[tuple[Window, torch.Tensor | None]]) -> dict[str, torch.Tensor]:
        from mmib_cli.io.images import stack_images

        batch = featurizer.collate([w for w, _ in rows], task)
        if image_size is not None:
            pixels, present = stack_images([p for _, p in rows], image_size)
            if pixels is not None:
                batch.update(pixel_values=pixels, image_present=present)
        return batch

    return collate
