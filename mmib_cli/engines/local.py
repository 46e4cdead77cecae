"""The local engine of `mmib annotate` and `mmib relations`: a streaming, cron-safe batch pipeline on this machine.

What the run is (options, mode, selected lines, settings, chunk rule, summary) comes from `mmib_cli.runs`; this
module only decides where the work runs.

Lines are read and prepared (validated, split into words, images decoded) in DataLoader worker processes,
chunk by chunk, while the main process runs the model; chunks come back in input order, so output order equals
input order and memory stays bounded whatever the input size. Output goes to `OUTPUT.partial` and is renamed
at the end; SIGINT/SIGTERM stop after the current chunk is flushed, leaving complete lines for `--resume`.
"""
from __future__ import annotations

import json
import logging
import pickle
import queue
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Iterator, NamedTuple

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmib_cli.annotation.annotator import Annotator
from mmib_cli.annotation.preprocess import prepare
from mmib_cli.choices import Engine
from mmib_cli.engines import engine
from mmib_cli.console import Progress
from mmib_cli.errors import ExitCode, InputUnreadable, MMIBError, OutputClosed, ResumeMismatch
from mmib_cli.io.jsonl import is_stream_input, read_lines_traced
from mmib_cli.io.records import ErrorRecord, post_id
from mmib_cli.io.writer import AtomicJSONLWriter
from mmib_cli.runs import ChunkRule, PrepareSettings, RunOptions, RunSummary
from mmib_cli.runs.provenance import ModelInfo, ResumeCheck, RunFingerprint, describe_model, run_info_path
from mmib_cli.signals import Interrupted, interruptible

logger = logging.getLogger(__name__)


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
        self.kept: dict[int, str | None] = {}  # resumed lines -> digest of the line they were made from (_read sets)

    def _size(self, index: int) -> int:
        if not self.rule.first or index >= 32:
            return self.rule.size
        return min(self.rule.size, self.rule.first << index)

    def _has_image(self, obj: Any) -> bool:
        return isinstance(obj, dict) and obj.get(self.settings.image_field) is not None

    def _lines(self, marks: dict[int, str | None]) -> Iterator[tuple[int, Any]]:
        """The lines to annotate; each line's digest goes to `marks`, and kept lines are proven (`ResumeCheck`)."""
        check = ResumeCheck(self.kept or {line: None for line in self.done}, self.opts.output)
        latest: dict[int, str | None] = {}  # the digest of the line just read (only selected lines are kept)

        def traced() -> Iterator[tuple[int, Any]]:
            for line, value, digest in read_lines_traced(self.opts.input_path):
                check.see(line, digest)
                latest.clear()
                latest[line] = digest
                yield line, value
            check.finish()

        for line, value in self.opts.select(traced(), self.done):
            check.selected(line)
            marks[line] = latest.get(line)
            yield line, value

    def __iter__(self) -> Iterator[tuple[list | bytes, dict[int, str | None]] | _Refusal]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        chunk: list[tuple[int, Any]] = []
        marks: dict[int, str | None] = {}
        index = images = 0
        try:
            for item in self._lines(marks):
                chunk.append(item)
                if self.max_images is not None and self._has_image(item[1]):
                    images += 1
                if len(chunk) >= self._size(index) or (self.max_images is not None and images >= self.max_images):
                    images = 0
                    if index % workers == worker:
                        yield self._prepare(chunk, in_worker=info is not None), _marks_of(chunk, marks)
                    marks.clear()
                    chunk, index = [], index + 1
        except ResumeMismatch as exc:  # sent as a value: a worker's exception would reach the user wrapped
            yield _Refusal(str(exc))
            return
        if chunk and index % workers == worker:
            yield self._prepare(chunk, in_worker=info is not None), _marks_of(chunk, marks)

    def _prepare(self, chunk: list[tuple[int, Any]], *, in_worker: bool) -> list | bytes:
        prepared = [prepare(line, obj, self.settings) for line, obj in chunk]
        return _pack(chunk, prepared, self.settings) if in_worker else prepared


class _Refusal(NamedTuple):
    """`--resume` found a kept record that the current input does not prove (the message of the ResumeMismatch)."""

    message: str


def _marks_of(chunk: list[tuple[int, Any]], marks: dict[int, str | None]) -> dict[int, str | None]:
    """The input-line digests of a chunk's lines (what the writer records next to their records)."""
    return {line: marks.get(line) for line, _ in chunk}


class _Reprepare(NamedTuple):
    """A line whose prepared form cannot be pickled (a value nested too deep): prepared again in the main process."""

    line: int
    json_text: str


def _pack(chunk: list[tuple[int, Any]], prepared: list, settings: PrepareSettings) -> bytes:
    """Pickle a prepared chunk in a worker process, so that no record can fail on its way back to the main process
    (the queue would drop the whole chunk): a post that does not pickle travels as its JSON text instead."""
    try:
        return pickle.dumps(prepared, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - RecursionError for deep values, or any object pickle refuses
        pass
    safe: list[Any] = []
    for (line, obj), item in zip(chunk, prepared):
        try:
            pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
            safe.append(item)
        except Exception as exc:  # noqa: BLE001
            try:
                safe.append(_Reprepare(line, json.dumps(obj)))
            except Exception:  # noqa: BLE001
                safe.append(ErrorRecord(post_id(obj, line, id_field=settings.id_field), line, "InvalidInput",
                                        f"line {line}: the record cannot be passed between processes "
                                        f"({type(exc).__name__}); rerun with --num-workers 0"))
    return pickle.dumps(safe, protocol=pickle.HIGHEST_PROTOCOL)


def _unpack(chunk: list | bytes, settings: PrepareSettings) -> list:
    """The prepared chunk a worker packed (`_pack`), or a chunk prepared in this process as it is."""
    if not isinstance(chunk, bytes):
        return chunk
    return [prepare(item.line, json.loads(item.json_text), settings) if isinstance(item, _Reprepare) else item
            for item in pickle.loads(chunk)]


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
    if num_workers == 0 or is_stream_input(source.opts.input_path):  # a pipe can be read once, by one reader
        return _threaded(iter(source))
    loader = DataLoader(source, batch_size=None, num_workers=num_workers, prefetch_factor=2,
                        collate_fn=lambda x: x, multiprocessing_context="fork" if _fork_ok() else None)
    return iter(loader)


def _fork_ok() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


@engine(Engine.LOCAL)
def run_local(opts: RunOptions, engine_options: None, model: ModelInfo) -> RunSummary:
    """The local engine's runner (`engines.execute`): the checked plan and the resolved model, used as they are."""
    return _run_with_summary(opts, None, model)


def run_pipeline(opts: RunOptions, *, annotator: Annotator | None = None) -> RunSummary:
    """Annotate `opts.input_path` into `opts.output` on this machine; returns the summary (also logged on stderr).

    The output is locked and checked, and a resumed output checked against what it was made from, before the model
    loads. SIGINT/SIGTERM (also during start-up) end the run with exit code 130/143 after flushing complete lines.

    Args:
        opts: the run options.
        annotator: an already loaded model to use instead of loading `opts.model` (benchmarks, notebooks).

    Raises:
        MMIBError: fatal problems: the model cannot load, the output is locked, exists or cannot be written, a
            resumed output was made from another input/model/options, reading the input failed mid-run (complete
            lines are kept in `OUTPUT.partial`).
    """
    return _run_with_summary(replace(opts, engine=Engine.LOCAL).check(), annotator, None)


def _run_with_summary(opts: RunOptions, annotator: Annotator | None, model: ModelInfo | None) -> RunSummary:
    start = time.perf_counter()
    summary = RunSummary()
    with interruptible():
        try:
            _run(opts, annotator, model, summary)
        except Interrupted as exc:
            summary.interrupted(exc.signum)
    return summary.finish(time.perf_counter() - start)


def _run(opts: RunOptions, annotator: Annotator | None, model: ModelInfo | None, summary: RunSummary) -> None:
    """`model`: resolved and checked by `runs.preflight` (None when `run_pipeline` is called directly)."""
    fingerprint: RunFingerprint | None = None

    def record_provenance() -> None:  # called when OUTPUT.partial is created, before its first line
        if fingerprint is not None and writer.path is not None:
            fingerprint.write(run_info_path(writer.path))

    writer = AtomicJSONLWriter(opts.output, force=opts.force, resume=opts.resume, on_open=record_provenance,
                               line_digests=True)
    summary.kept_errors = writer.kept_errors  # the exit code counts the kept error records too
    try:
        with writer:
            if annotator is not None:
                model = _describe(annotator)
            elif model is None:
                model = describe_model(opts.model, online=opts.online)
                opts.check_tasks(model.tasks, model.label)
            if writer.path is not None and not writer.direct:
                fingerprint = RunFingerprint.of(opts, model)
                if writer.resumed_from is not None and writer.done_lines:  # lines made from another run's input?
                    fingerprint.check_resume(run_info_path(writer.path), opts.input_path, writer.resumed_from)
            if annotator is None:
                annotator = Annotator.from_pretrained(model, device=opts.device, dtype=opts.dtype, online=opts.online)
            _annotate(opts, annotator, writer, summary)
    except Interrupted as exc:
        summary.interrupted(exc.signum)
        logger.warning("interrupted by %s: %s", exc, _kept(writer))
    except OutputClosed:  # `mmib annotate ... -o - | head`: the reader has what it wanted
        summary.exit_code = ExitCode.BROKEN_PIPE
        logger.debug("stdout was closed by its reader after %d lines; stopped", writer.records_written)


def _describe(annotator: Annotator) -> ModelInfo:
    """ModelInfo of a model loaded by the caller (its files are not known: the label stands for them)."""
    tasks = frozenset(task for task in ("ner", "re") if getattr(annotator, task) is not None)
    return ModelInfo(annotator.model_label, tasks, f"label:{annotator.model_label}")


def _kept(writer: AtomicJSONLWriter) -> str:
    """What an interrupted or failed run leaves, for its last message."""
    if writer.partial_path is not None and writer.partial_path.exists():
        return f"the complete lines are kept in {writer.partial_path}; continue with --resume"
    if writer.path is None or writer.direct:
        return f"{writer.records_written} complete lines were written"
    return "nothing was written"


def _annotate(opts: RunOptions, annotator: Annotator, writer: AtomicJSONLWriter, summary: RunSummary) -> None:
    """The run proper: read and prepare chunks, annotate them, write and count every record in input order."""
    if annotator.ner is not None and annotator.ner.image_info is None:
        logger.info("model %s was trained without images: posts are annotated from their text only",
                    annotator.model_label)
    mode, relation_settings = opts.mode, opts.relation_settings
    settings = annotator.prepare_settings(mode, relation_settings, **opts.prepare_fields())
    # CPU: a reader thread, not a worker process: the model already uses every core, and a second process costs more
    # than it overlaps (benchmarks/README.md, 2 cores: 0.92 vs 0.79 of the pure-forward rate on text-only posts,
    # 0.78 vs 0.74 with photos on half the posts)
    workers = opts.num_workers if opts.num_workers is not None else (2 if annotator.device.type == "cuda" else 0)
    done = frozenset(line for line, _ in writer.done_lines)
    summary.resumed = len(done)
    source = _ChunkSource(opts, settings, opts.chunk_rule, done)
    # a window in a partly filled call waits for mates from the next chunks (up to DEFAULT_MAX_WAIT posts)
    session = annotator.session(mode, relation_settings)
    with Progress(f"mmib {opts.task}", enabled=opts.progress, total=opts.progress_total(done)) as progress:
        def finish() -> None:
            _write(session.finish(), writer, summary, progress)

        for chunk in _read(source, workers, writer, before_abort=finish):
            _write(session.feed(chunk), writer, summary, progress)
        finish()


def _write(records: list[dict[str, Any]], writer: AtomicJSONLWriter, summary: RunSummary, progress: Progress) -> None:
    """Write and count records the model stage finished (in input order), and show them as progress."""
    for record in records:
        summary.count(writer.write(record))
    writer.flush()
    progress.advance(len(records))


def _read(source: _ChunkSource, workers: int, writer: AtomicJSONLWriter,
          before_abort: Callable[[], None]) -> Iterator[list]:
    """The prepared chunks in input order; a failure of the reader or of a worker process ends the run, after
    `before_abort` has finished the posts already read.

    Each chunk's input-line digests go to the writer (`expect`) before its records; a resumed output is proven
    against the input as it is read (`ResumeCheck`).

    Raises:
        InputUnreadable: reading or preparing the input failed (an I/O error, a worker that died); the complete
            lines are kept in `OUTPUT.partial`.
        ResumeMismatch: a kept record does not answer the current input's line.
    """
    source.kept = writer.done_digests
    chunks = _chunks(source, workers)
    while True:
        try:
            item = next(chunks)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - any reader/worker failure is fatal, never a silent loss
            logger.debug("reading the input failed", exc_info=True)
            try:
                before_abort()
            except Exception:  # noqa: BLE001 - the reader's failure is the one to report
                logger.debug("finishing the posts already read failed", exc_info=True)
            writer.abort()
            reason = exc if isinstance(exc, MMIBError) else f"{type(exc).__name__}: {exc}"
            raise InputUnreadable(f"reading {source.opts.input_path} failed ({reason}); {_kept(writer)}") from exc
        if isinstance(item, _Refusal):
            writer.abort()
            raise ResumeMismatch(item.message)
        chunk, marks = item
        writer.expect(marks)
        yield _unpack(chunk, source.settings)
