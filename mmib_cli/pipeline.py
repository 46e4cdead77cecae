"""The local engine of `mmib annotate` and `mmib relations`: a streaming, cron-safe batch pipeline on this machine.

What the run is (options, mode, selected lines, settings, chunk rule, summary) comes from `mmib_cli.runs`; this
module only decides where the work runs.

Lines are read and prepared (validated, split into words, images decoded) in DataLoader worker processes,
chunk by chunk, while the main process runs the model; chunks come back in input order, so output order equals
input order and memory stays bounded whatever the input size. Output goes to `OUTPUT.partial` and is renamed
at the end; SIGINT/SIGTERM stop after the current chunk is flushed, leaving complete lines for `--resume`.
"""
from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from dataclasses import replace
from typing import Any, Iterator

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmib_cli.annotate import Annotator, prepare
from mmib_cli.console import Progress
from mmib_cli.io.jsonl import AtomicJSONLWriter, read_lines
from mmib_cli.choices import Engine
from mmib_cli.runs import ChunkRule, PrepareSettings, RunOptions, RunSummary

logger = logging.getLogger(__name__)


class Interrupted(BaseException):
    """Raised in the main thread by the SIGTERM/SIGINT handler (a BaseException, like KeyboardInterrupt, so that
    per-record error handling never mistakes it for a bad record)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _ChunkSource(IterableDataset):
    """Reads the input and yields prepared chunks; with N workers, worker w prepares chunks k where k % N == w.

    A chunk closes at `rule.size` posts or at `rule.max_images` posts naming an image (counted on the raw lines, so
    every worker cuts the same chunks; only when the model reads images). With `rule.first`, chunk k holds at most
    `rule.first * 2**k` posts, so the model starts after one small chunk instead of waiting for a full one.
    """

    def __init__(self, opts: RunOptions, settings: PrepareSettings, rule: ChunkRule,
                 done: frozenset[int] = frozenset()) -> None:
        self.opts, self.settings, self.rule, self.done = opts, settings, rule, done
        self.max_images = rule.max_images if settings.image_size is not None else None

    def _size(self, index: int) -> int:
        if not self.rule.first or index >= 32:
            return self.rule.size
        return min(self.rule.size, self.rule.first << index)

    def _has_image(self, obj: Any) -> bool:
        return isinstance(obj, dict) and obj.get(self.settings.image_field) is not None

    def __iter__(self) -> Iterator[list]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        chunk: list[tuple[int, Any]] = []
        index = images = 0
        for item in self.opts.select(read_lines(self.opts.input_path), self.done):
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
    if num_workers == 0 or source.opts.input_path == "-":
        return _threaded(iter(source))
    loader = DataLoader(source, batch_size=None, num_workers=num_workers, prefetch_factor=2,
                        collate_fn=lambda x: x, multiprocessing_context="fork" if _fork_ok() else None)
    return iter(loader)


def _fork_ok() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def run_pipeline(opts: RunOptions) -> RunSummary:
    """Annotate `opts.input_path` into `opts.output` on this machine; returns the summary (also logged on stderr).

    Raises:
        MMIBError: fatal problems (model cannot load, output exists or cannot be written) before any output.
    """
    start = time.perf_counter()
    opts = replace(opts, engine=Engine.LOCAL).check()
    writer = AtomicJSONLWriter(opts.output, force=opts.force, resume=opts.resume)
    annotator = Annotator.from_pretrained(opts.model, device=opts.device, dtype=opts.dtype, online=opts.online,
                                          batch_size=opts.batch_size, max_tokens=opts.max_tokens)
    opts.check_tasks([task for task in ("ner", "re") if getattr(annotator, task) is not None], annotator.model_label)
    if annotator.ner is not None and annotator.ner.image_info is None:
        logger.info("model %s was trained without images: posts are annotated from their text only",
                    annotator.model_label)
    settings = annotator.prepare_settings(**opts.prepare_fields())
    # CPU: a reader thread, not a worker process: the model already uses every core, and a second process costs more
    # than it overlaps (benchmarks/README.md, 2 cores: 0.92 vs 0.79 of the pure-forward rate on text-only posts,
    # 0.78 vs 0.74 with photos on half the posts)
    workers = opts.num_workers if opts.num_workers is not None else (2 if annotator.device.type == "cuda" else 0)
    mode, relation_settings = opts.mode, opts.relation_settings
    summary = RunSummary()
    with writer:
        done = frozenset(line for line, _ in writer.done_lines)
        summary.resumed = len(done)
        source = _ChunkSource(opts, settings, opts.chunk_rule, done)
        previous = _install_signal_handlers()
        try:
            with Progress(f"mmib {opts.task}", enabled=opts.progress) as progress:
                for chunk in _chunks(source, workers):
                    for record in annotator.process(chunk, mode, relation_settings):
                        writer.write(record)
                        summary.count(record)
                    writer.flush()
                    progress.advance(len(chunk))
        except Interrupted as exc:
            writer.flush()
            summary.interrupted(exc.signum)
            writer.abort()
            logger.warning("interrupted by %s: %d complete lines kept in %s; continue with --resume", exc,
                           writer.records_written, writer.partial_path or "stdout")
        finally:
            _restore_signal_handlers(previous)
    return summary.finish(time.perf_counter() - start)


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
