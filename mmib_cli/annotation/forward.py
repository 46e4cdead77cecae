"""Fixed-shape forward passes shared by annotation, evaluation and training-time validation.

Reproducibility by construction: every call into the model has a shape that is a function of the window (or post,
or photo) it computes, never of what else is in the input. A window of `n` pieces always runs in a call of exactly
`rows_per_call(device, L)` rows padded to `L = bucket_length(n)` pieces, empty rows filling what its bucket mates do not;
a post's CRF decode runs in a call of `CRF_ROWS` rows padded to `word_bucket(words)`; photos go through the image
path `IMAGE_BATCH` at a time. So a window's bits depend only on that window, on any CPU whose kernels do not look
at the data: batch mates, chunking, sharding, resuming and engines cannot change them. No constant here is a
measured fact about one CPU's kernels; they only trade padding for speed (benchmarks/README.md).

`WindowRunner` queues windows per bucket and runs a bucket when it is full (or when flushed), so a stream of
posts pays for almost no empty rows; `predict_ner` / `predict_re` run a finite set of windows (eval, training).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from mmib_cli.features import Window, merge_window_emissions

logger = logging.getLogger(__name__)

LENGTH_BUCKETS = (16, 24, 32, 40, 48, 64, 96, 128)
"""Padded lengths a window can get (plus the model's `max_length`, which caps them). Steps of 8 up to 48 pieces
where most tweet windows fall, coarser above: a piece costs about the same at every length (benchmarks/README.md),
so finer buckets waste fewer padded pieces, while each bucket can leave one partly empty call at the end of a run."""

PIECES_PER_CALL = {"cpu": 512, "cuda": 4096}
"""About how many pieces (rows x padded length) a text call holds, by device type (other devices take the CUDA
figure): a call of bucket length L has `rows_per_call(device, L)` rows, so short windows run 32 to a call and long
ones 4, and every call gives its matrix products about the same work. On CPU at 2 threads a row of 16 pieces cost
2.5 ms in calls of 32 rows against 3.5 ms in calls of 8, while at 48 pieces 8 to 16 rows were best
(benchmarks/README.md); a partly empty call at the end of a run costs about the same for every bucket."""

IMAGE_BATCH = 16
"""Photos per image-path call (backbone, grid pooling, projection); the last call of a batch is filled with blank
images."""

CRF_ROWS = 64
"""Posts per CRF call (Viterbi and forward-backward). A CRF step is a handful of tiny ops whose cost hardly depends
on the row count, so wide calls keep the per-post cost low."""

WORD_BUCKETS = (8, 16, 32, 64, 128, 256)
"""Padded word counts of a CRF call; longer posts are padded to a multiple of the last bucket."""


@dataclass
class NERPrediction:
    """Word-level tags (label strings) and the probability of each predicted tag."""

    tags: list[str]
    tag_scores: list[float]


def bucket_length(pieces: int, max_length: int) -> int:
    """The padded length of a window of `pieces` pieces: the smallest bucket that holds it (at most `max_length`)."""
    for bucket in LENGTH_BUCKETS:
        if pieces <= bucket < max_length:
            return bucket
    return max(pieces, max_length)


def word_bucket(words: int) -> int:
    """The padded word count of a post of `words` words in a CRF call."""
    for bucket in WORD_BUCKETS:
        if words <= bucket:
            return bucket
    step = WORD_BUCKETS[-1]
    return -(-words // step) * step


def rows_per_call(device: torch.device, length: int) -> int:
    """Rows of every text call of bucket length `length` on `device` (between 4 and 64)."""
    pieces = PIECES_PER_CALL["cpu" if device.type == "cpu" else "cuda"]
    return max(4, min(64, pieces // length))


class CallFailed(Exception):
    """A forward call raised: `owners` are the owners of the windows it held (see `WindowRunner.add`)."""

    def __init__(self, cause: BaseException, owners: list[object]) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause, self.owners = cause, owners


@dataclass
class _Entry:
    window: Window
    image: torch.Tensor | None  # the visual tokens (N, d) of the window's post, or None
    done: Callable[[torch.Tensor], None]  # gets the row's result (float32, CPU)
    owner: object = None
    since: int = 0  # the caller's clock (e.g. posts fed) when the window was queued


class WindowRunner:
    """Runs windows of one model in fixed-shape calls: one queue per length bucket, a call per `rows` windows.

    `add` queues a window with a callback that receives the window's result: NER emissions `(words, tags)` or RE
    probabilities `(labels,)`, float32 on the CPU. `run_full` runs every full bucket; `flush` also runs the partly
    filled ones (padded with empty rows: same shape, so the same bits). Results never depend on which windows share
    a call.
    """

    def __init__(self, model: nn.Module, featurizer, task: str) -> None:
        self.model, self.featurizer, self.task = model, featurizer, task
        self.device = next(model.parameters()).device
        self.max_length = featurizer.max_length
        self.queues: dict[int, list[_Entry]] = {}
        self.filler = Window([featurizer.cls_id, featurizer.sep_id], [0, 0])
        self.uses_images = bool(getattr(model, "uses_images", False))

    def add(self, window: Window, done: Callable[[torch.Tensor], None], *, image: torch.Tensor | None = None,
            owner: object = None, since: int = 0) -> None:
        """Queue `window` (of a post whose visual tokens are `image`); `done(result)` is called when it has run.

        `since`: the caller's clock when it was queued (see `run_stale`).
        """
        length = bucket_length(len(window.input_ids), self.max_length)
        entry = _Entry(window, image if self.uses_images else None, done, owner, since)
        self.queues.setdefault(length, []).append(entry)

    @property
    def pending(self) -> int:
        """Windows queued and not yet run."""
        return sum(len(q) for q in self.queues.values())

    def run_full(self) -> None:
        """Run every bucket that holds a full call, shortest bucket first."""
        for length in sorted(self.queues):
            queue = self.queues[length]
            rows = rows_per_call(self.device, length)
            while len(queue) >= rows:
                entries = queue[:rows]
                del queue[:rows]
                self._run(entries, length)

    def run_stale(self, before: int) -> None:
        """Run every bucket whose oldest window was queued before the clock read `before` (padded with empty rows)."""
        for length in sorted(self.queues):
            queue = self.queues[length]
            if queue and queue[0].since < before:
                del self.queues[length]
                rows = rows_per_call(self.device, length)
                for start in range(0, len(queue), rows):
                    self._run(queue[start: start + rows], length)

    def flush(self) -> None:
        """Run every queued window (the last call of a bucket padded with empty rows)."""
        self.run_full()
        for length in sorted(self.queues):
            entries = self.queues.pop(length)
            if entries:
                self._run(entries, length)

    def discard(self, owners: set) -> None:
        """Drop the queued windows of `owners`."""
        for length, queue in self.queues.items():
            self.queues[length] = [e for e in queue if e.owner not in owners]

    @torch.inference_mode()
    def _run(self, entries: list[_Entry], length: int) -> None:
        try:
            results = self._call(entries, length)
        except Exception as exc:  # noqa: BLE001 - the caller decides whose posts it costs
            raise CallFailed(exc, [e.owner for e in entries]) from exc
        for entry, result in zip(entries, results):
            entry.done(result)

    def _call(self, entries: list[_Entry], length: int) -> list[torch.Tensor]:
        count = rows_per_call(self.device, length)
        rows = [e.window for e in entries] + [self.filler] * (count - len(entries))
        words = length if self.task == "ner" else None
        batch = self.featurizer.collate(rows, self.task, length=length, words=words)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()
                 if k not in ("labels", "label_weights")}
        if self.uses_images:
            tokens = self.model.no_image_tokens.new_zeros((count, *self.model.no_image_tokens.shape))
            present = torch.zeros(count, dtype=torch.bool, device=self.device)
            for i, entry in enumerate(entries):
                if entry.image is not None:
                    tokens[i], present[i] = entry.image, True
            batch.update(image_tokens=tokens, image_present=present)
        logits = self.model(**batch).logits
        if self.task == "ner":
            out = logits.float().cpu()
            return [out[i, : len(e.window.word_index)] for i, e in enumerate(entries)]
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        return [probs[i] for i in range(len(entries))]


@torch.inference_mode()
def encode_photos(model: nn.Module, photos: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Visual tokens `(N, d)` of each photo (float pixels `(3, S, S)`; None: no photo), `IMAGE_BATCH` per call.

    Every call holds exactly `IMAGE_BATCH` images (blank ones fill the last), so a photo's tokens do not depend on
    the other photos of the batch. All None when the model reads no images.
    """
    out: list[torch.Tensor | None] = [None] * len(photos)
    if not getattr(model, "uses_images", False):
        return out
    param = next(model.image_backbone.parameters(), None)
    if param is None:
        param = next(model.parameters())
    index = [i for i, photo in enumerate(photos) if photo is not None]
    for start in range(0, len(index), IMAGE_BATCH):
        part = index[start: start + IMAGE_BATCH]
        first = photos[part[0]]
        pixels = torch.zeros((IMAGE_BATCH, *first.shape), dtype=param.dtype, device=param.device)
        for row, i in enumerate(part):
            pixels[row] = photos[i].to(param.device, param.dtype)
        tokens = model.visual_tokens(pixels)
        for row, i in enumerate(part):
            out[i] = tokens[row]
    return out


@torch.inference_mode()
def decode_posts(model: nn.Module, emissions: Sequence[torch.Tensor]) -> list[NERPrediction]:
    """CRF-decode each post's word emissions `(words, tags)` in calls of `CRF_ROWS` posts padded to a word bucket.

    A post's tags and tag scores are a function of its emissions alone (its call's shape is).
    """
    labels = model.config.labels
    device = next(model.parameters()).device
    out = [NERPrediction([], []) for _ in emissions]
    buckets: dict[int, list[int]] = {}
    for i, rows in enumerate(emissions):
        if rows.shape[0]:
            buckets.setdefault(word_bucket(rows.shape[0]), []).append(i)
    for words in sorted(buckets):
        members = buckets[words]
        for start in range(0, len(members), CRF_ROWS):
            part = members[start: start + CRF_ROWS]
            padded = torch.zeros((CRF_ROWS, words, len(labels)))
            mask = torch.zeros((CRF_ROWS, words), dtype=torch.bool)
            mask[:, 0] = True  # empty rows are one-word posts of zero emissions; their result is dropped
            for row, i in enumerate(part):
                n = emissions[i].shape[0]
                padded[row, :n] = emissions[i]
                mask[row, :n] = True
            with _single_threaded(device):
                tags, marginals = model.decode(padded.to(device), mask.to(device))
            marginals = marginals.float().cpu()
            for row, i in enumerate(part):
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


def predict_ner(loaded, windows_per_post: Sequence[Sequence[Window]], *,
                photos: Sequence[torch.Tensor | None] | None = None) -> list[NERPrediction]:
    """Tag every word of every post (windows from `Featurizer.encode_ner`; `photos[k]`: post k's float pixels)."""
    model = loaded.model
    visual = encode_photos(model, photos) if photos is not None else [None] * len(windows_per_post)
    runner = WindowRunner(model, loaded.featurizer, "ner")
    rows: list[list[torch.Tensor | None]] = [[None] * len(ws) for ws in windows_per_post]
    for k, windows in enumerate(windows_per_post):
        for j, window in enumerate(windows):
            runner.add(window, _setter(rows[k], j), image=visual[k])
    _flush(runner)
    merged = [merge_window_emissions(ws, r) for ws, r in zip(windows_per_post, rows)]
    return decode_posts(model, merged)


def predict_re(loaded, windows: Sequence[Window], *,
               photos: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
    """Relation probabilities `(len(windows), labels)` (`photos[i]`: float pixels of window i's post, or None)."""
    model = loaded.model
    visual = encode_photos(model, photos) if photos is not None else [None] * len(windows)
    probs = torch.zeros((len(windows), len(model.config.labels)))
    runner = WindowRunner(model, loaded.featurizer, "re")
    for i, window in enumerate(windows):
        runner.add(window, _setter(probs, i), image=visual[i])
    _flush(runner)
    return probs


def _flush(runner: WindowRunner) -> None:
    """Run every queued window; a failed call raises its own exception (no per-post recovery here)."""
    try:
        runner.flush()
    except CallFailed as failure:
        raise failure.cause from None


def _setter(target, index: int) -> Callable[[torch.Tensor], None]:
    def done(result: torch.Tensor) -> None:
        target[index] = result
    return done
