"""The streaming, cron-safe batch pipeline behind `mmib annotate` and `mmib relations`.

Lines are read and prepared (validated, split into words, images decoded) in DataLoader worker processes,
chunk by chunk, while the main process runs the model; chunks come back in input order, so output order equals
input order and memory stays bounded whatever the input size. Output goes to `OUTPUT.partial` and is renamed
at the end; SIGINT/SIGTERM stop after the current chunk is flushed, leaving complete lines for `--resume`.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmib_cli.annotate import Annotator, PrepareSettings, RelationSettings, prepare
from mmib_cli.choices import (DEFAULT_BATCH_SIZE, DEFAULT_DEVICE, DEFAULT_MAX_TOKENS, DEFAULT_MIN_SCORE, DEFAULT_MODEL,
                              Command, DType, Mode, OnMissingImage)
from mmib_cli.console import Progress
from mmib_cli.errors import ExitCode, InvalidCheckpoint
from mmib_cli.io.jsonl import AtomicJSONLWriter, input_base_dir, is_stream_input, read_lines

logger = logging.getLogger(__name__)


class Interrupted(BaseException):
    """Raised in the main thread by the SIGTERM/SIGINT handler (a BaseException, like KeyboardInterrupt, so that
    per-record error handling never mistakes it for a bad record)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class PipelineOptions:
    """Everything `mmib annotate` / `mmib relations` take (see their --help)."""

    task: Command
    input_path: str
    output: str
    model: str = DEFAULT_MODEL
    relations: bool = False
    pair: bool = False
    min_score: float = DEFAULT_MIN_SCORE
    keep_none: bool = False
    type_constraints: bool = True
    batch_size: int = DEFAULT_BATCH_SIZE
    max_tokens: int = DEFAULT_MAX_TOKENS
    num_workers: int | None = None
    on_missing_image: OnMissingImage = OnMissingImage.TEXT_ONLY
    image_root: str | None = None
    id_field: str = "id"
    text_field: str = "text"
    image_field: str = "image"
    limit: int | None = None
    shard: tuple[int, int] | None = None
    resume: bool = False
    force: bool = False
    progress: bool = True
    device: str = DEFAULT_DEVICE
    dtype: DType = DType.AUTO
    online: bool | None = None
    chunk_size: int = 0  # posts per prepared chunk; 0 = CHUNK_BATCHES x batch_size, at most 4 x batch_size photos

    def __post_init__(self) -> None:
        self.task = Command.parse(self.task, what="task")
        self.on_missing_image = OnMissingImage.parse(self.on_missing_image, what="on_missing_image")
        self.dtype = DType.parse(self.dtype, what="dtype")

    @property
    def mode(self) -> Mode:
        """What `Annotator.process` does with each chunk."""
        if self.task is Command.RELATIONS:
            return Mode.RELATIONS
        return Mode.ANNOTATE_RELATIONS if self.relations else Mode.ANNOTATE

    @classmethod
    def from_cli(cls, **options: Any) -> "PipelineOptions":
        """Validate CLI values (raises ValueError for usage errors, mapped to exit code 2)."""
        shard = options.pop("shard", None)
        if options.get("resume") and options.get("force"):
            raise ValueError("use either --resume or --force, not both")
        if options.get("resume") and options.get("output") == "-":
            raise ValueError("--resume needs an output file, not stdout")
        check_input_path(options["input_path"])
        return cls(shard=parse_shard(shard) if shard else None, **options)


def check_input_path(input_path: str) -> None:
    """Accept `-`, a file, or a readable stream (a FIFO, `<(zcat a.gz)`); raise ValueError naming what it is else."""
    if input_path == "-":
        return
    path = Path(input_path)
    if path.is_dir():
        raise ValueError(f"input {input_path} is a directory; give a JSONL file (or - for stdin)")
    if not path.exists():
        raise ValueError(f"input {input_path} does not exist")
    if not os.access(path, os.R_OK):
        raise ValueError(f"input {input_path} is not readable (permission denied)")


def parse_shard(value: str) -> tuple[int, int]:
    """`I/N` with 1 <= I <= N → (I, N); lines whose (number - 1) % N == I - 1 belong to shard I."""
    try:
        index, total = (int(x) for x in value.split("/"))
    except ValueError:
        raise ValueError(f"--shard expects I/N such as 2/8, got {value!r}") from None
    if not 1 <= index <= total:
        raise ValueError(f"--shard {value}: need 1 <= I <= N")
    return index, total


@dataclass
class RunSummary:
    """Counts of one run; `exit_code` is 0, 3 (some error records) or 130/143 (interrupted)."""

    posts: int = 0
    annotated: int = 0
    entities: int = 0
    relations: int = 0
    errors: int = 0
    skipped: int = 0
    resumed: int = 0
    seconds: float = 0.0
    exit_code: ExitCode = ExitCode.OK
    error_types: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        rate = self.posts / self.seconds if self.seconds > 0 else 0.0
        text = (f"{self.posts} posts ({self.annotated} annotated, {self.errors} errors, {self.skipped} skipped), "
                f"{self.entities} entities, {self.relations} relations in {self.seconds:.1f}s ({rate:.1f} posts/s)")
        if self.resumed:
            text += f"; {self.resumed} lines already done before --resume"
        return text


CHUNK_BATCHES = 16
"""Default posts per chunk, in batches. A chunk is the window within which posts are sorted by length before being
cut into batches: on 2,000 tweet-like posts 87% of the padded pieces are real with the default chunks (83% when half
the posts have photos and chunks close at the photo cap) against 74% with fixed 4-batch chunks (benchmarks/README.md)."""
CHUNK_IMAGE_BATCHES = 4
"""A default chunk closes early once it holds this many batches' worth of posts with a photo, so the photos queued
between the reader and the model stay bounded (each is a 150 KB uint8 crop at 224 px; benchmarks/README.md)."""


class _ChunkSource(IterableDataset):
    """Reads the input and yields prepared chunks; with N workers, worker w prepares chunks k where k % N == w.

    A chunk closes at `chunk_size` posts or at `max_images` posts naming an image (counted on the raw lines, so
    every worker cuts the same chunks). With `first_chunk`, chunk k holds at most `first_chunk * 2**k` posts, so
    the model starts after one small chunk instead of waiting for a full one to be prepared.
    """

    def __init__(self, source: str, settings: PrepareSettings, chunk_size: int, limit: int | None,
                 shard: tuple[int, int] | None, done: frozenset[int], max_images: int | None = None,
                 first_chunk: int | None = None) -> None:
        self.source, self.settings, self.chunk_size = source, settings, chunk_size
        self.limit, self.shard, self.done = limit, shard, done
        self.max_images = max_images if settings.image_size is not None else None
        self.first_chunk = first_chunk

    def _size(self, index: int) -> int:
        if not self.first_chunk or index >= 32:
            return self.chunk_size
        return min(self.chunk_size, self.first_chunk << index)

    def _has_image(self, obj: Any) -> bool:
        return isinstance(obj, dict) and obj.get(self.settings.image_field) is not None

    def lines(self) -> Iterator[tuple[int, Any]]:
        for line, obj in read_lines(self.source):
            if self.limit is not None and line > self.limit:
                return
            if self.shard and (line - 1) % self.shard[1] != self.shard[0] - 1:
                continue
            if line in self.done:
                continue
            yield line, obj

    def __iter__(self) -> Iterator[list]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        chunk: list[tuple[int, Any]] = []
        index = images = 0
        for item in self.lines():
            chunk.append(item)
            if self.max_images is not None and self._has_image(item[1]):
                images += 1
            if len(chunk) >= self._size(index) or (self.max_images is not None and images >= self.max_images):
                images = 0
                if index % workers == worker:
                    yield [prepare(line, obj, self.settings) for line, obj in chunk]
                chunk, index = [], index + 1
        if chunk and index % workers == worker:
            yield [prepare(line, obj, self.settings) for line, obj in chunk]


def _threaded(iterator: Iterator[list], depth: int = 2) -> Iterator[list]:
    """Run a chunk iterator in a background thread (stdin input, or --num-workers 0)."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def pump() -> None:
        try:
            for item in iterator:
                while not stop.is_set():
                    try:
                        box.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put(end)
        except BaseException as exc:  # surface reader errors in the main thread
            box.put(exc)

    thread = threading.Thread(target=pump, name="mmib-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = box.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _chunks(source: _ChunkSource, num_workers: int) -> Iterator[list]:
    if num_workers == 0 or is_stream_input(source.source):  # a pipe can be read once, by one reader
        return _threaded(iter(source))
    loader = DataLoader(source, batch_size=None, num_workers=num_workers, prefetch_factor=2,
                        collate_fn=lambda x: x, multiprocessing_context="fork" if _fork_ok() else None)
    return iter(loader)


def _fork_ok() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def run_pipeline(opts: PipelineOptions) -> RunSummary:
    """Annotate `opts.input_path` into `opts.output`; returns the summary (also logged on stderr).

    Raises:
        MMIBError: fatal problems (model cannot load, output exists or cannot be written) before any output.
    """
    start = time.perf_counter()
    writer = AtomicJSONLWriter(opts.output, force=opts.force, resume=opts.resume)
    annotator = Annotator.from_pretrained(opts.model, device=opts.device, dtype=opts.dtype, online=opts.online,
                                          batch_size=opts.batch_size, max_tokens=opts.max_tokens)
    _check_tasks(annotator, opts)
    if annotator.ner is not None and annotator.ner.image_info is None:
        logger.info("model %s was trained without images: posts are annotated from their text only",
                    annotator.model_label)
    base_dir = input_base_dir(opts.input_path)
    settings = annotator.prepare_settings(
        id_field=opts.id_field, text_field=opts.text_field, image_field=opts.image_field, base_dir=base_dir,
        image_root=Path(opts.image_root) if opts.image_root else None, on_missing_image=opts.on_missing_image)
    mode = opts.mode
    relation_settings = RelationSettings(pair=opts.pair or opts.task is Command.ANNOTATE, min_score=opts.min_score,
                                         keep_none=opts.keep_none, type_constraints=opts.type_constraints)
    device_type = annotator.device.type
    # CPU: a reader thread, not a worker process: the model already uses every core, and a second process costs more
    # than it overlaps (benchmarks/README.md, 2 cores: 0.92 vs 0.79 of the pure-forward rate on text-only posts,
    # 0.78 vs 0.74 with photos on half the posts)
    workers = opts.num_workers if opts.num_workers is not None else (2 if device_type == "cuda" else 0)
    summary = RunSummary()
    with writer:
        done = frozenset(line for line, _ in writer.done_lines)
        summary.resumed = len(done)
        source = _ChunkSource(opts.input_path, settings, opts.chunk_size or CHUNK_BATCHES * opts.batch_size,
                              opts.limit, opts.shard, done,
                              max_images=None if opts.chunk_size else CHUNK_IMAGE_BATCHES * opts.batch_size,
                              first_chunk=None if opts.chunk_size else opts.batch_size)
        previous = _install_signal_handlers()
        try:
            with Progress(f"mmib {opts.task}", enabled=opts.progress) as progress:
                for chunk in _chunks(source, workers):
                    for record in annotator.process(chunk, mode, relation_settings):
                        writer.write(record)
                        _count(summary, record)
                    writer.flush()
                    progress.advance(len(chunk))
        except Interrupted as exc:
            writer.flush()
            summary.exit_code = ExitCode.TERMINATED if exc.signum == signal.SIGTERM else ExitCode.INTERRUPTED
            writer.abort()
            logger.warning("interrupted by %s: %d complete lines kept in %s; continue with --resume", exc,
                           writer.records_written, writer.partial_path or "stdout")
        finally:
            _restore_signal_handlers(previous)
    summary.seconds = time.perf_counter() - start
    if summary.exit_code == ExitCode.OK and summary.errors:
        summary.exit_code = ExitCode.PARTIAL
    logger.info("%s", summary.line())
    if summary.error_types:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(summary.error_types.items()))
        logger.warning("error records by type: %s", counts)
    return summary


def _check_tasks(annotator: Annotator, opts: PipelineOptions) -> None:
    """Fail before any output is written when the model lacks the part (ner/re) the command needs."""
    needs_re = opts.mode.wants_relations
    needs_ner = opts.task is Command.ANNOTATE
    missing = [task for task, needed, part in (("ner", needs_ner, annotator.ner), ("re", needs_re, annotator.re))
               if needed and part is None]
    if missing:
        what = " and ".join("an entity (ner) model" if t == "ner" else "a relation (re) model" for t in missing)
        raise InvalidCheckpoint(f"model {annotator.model_label} has no {what}, which `mmib {opts.task}"
                                f"{' --relations' if opts.relations else ''}` needs; pass a bundle with ner/ and re/ "
                                "parts to --model (see `mmib models`)")


def _count(summary: RunSummary, record: dict[str, Any]) -> None:
    summary.posts += 1
    if "error" in record:
        summary.errors += 1
        kind = record["error"].get("type", "Error")
        summary.error_types[kind] = summary.error_types.get(kind, 0) + 1
    elif "skipped" in record:
        summary.skipped += 1
    else:
        summary.annotated += 1
        summary.entities += len(record.get("entities", []))
        summary.relations += len(record.get("relations", []) or [])


def _install_signal_handlers() -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        for other in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the final flush
            signal.signal(other, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    return previous


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for signum, old in previous.items():
        signal.signal(signum, old)
