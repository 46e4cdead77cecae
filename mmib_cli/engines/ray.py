"""Scale-out on Ray Data: `mmib annotate INPUT -o OUTPUT_DIR --engine ray` (optional extra `pip install "mmib[ray]"`).

This is the only module that imports ray, and only inside functions, so mmib works without it. A run has three
Ray Data stages:

1. read: one task streams INPUT (a local/shared path or a pyarrow URI such as `s3://...`) through the same
   `read_lines` as the local pipeline, so blank lines, malformed JSON and over-long lines behave identically and keep
   their physical line numbers; each row is `{"line": int, "record": JSON text, "error": JSON text}`;
2. annotate: `RayAnnotator` actors (model loaded once per actor, optionally a GPU each) run the local pipeline's
   `prepare` + `Annotator.process` on each batch and return `{"line": int, "record": output line bytes}`;
3. write: tasks write `OUTPUT_DIR/part-<first line>.jsonl` shards (each sorted by line, bytes exactly as
   `mmib_cli.io.writer.encode_record`), through a temporary name so a shard with its final name is complete, and
   return their counts, which add up to the same `RunSummary` as the local pipeline.

The union of the shards is the local pipeline's output (sort by `line` to get input order).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import signal
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mmib_cli.choices import DEFAULT_DEVICE, DEFAULT_MODEL, DType, Engine, Mode
from mmib_cli.engines import engine
from mmib_cli.errors import MMIBError, OutputExists, OutputWriteError, UsageError
from mmib_cli.io.jsonl import DEFAULT_MAX_LINE_BYTES, read_lines
from mmib_cli.io.lock import OutputLock
from mmib_cli.io.writer import encode_record
from mmib_cli.io.records import ErrorRecord, SkippedRecord, marker_from_json
from mmib_cli.runs import RunOptions, RunSummary, is_uri
from mmib_cli.storage.model_info import ModelInfo
from mmib_cli.signals import Interrupted, interruptible

logger = logging.getLogger(__name__)

__all__ = ["ENGINES", "RayAnnotator", "RayOptions", "run_ray"]

ENGINES = tuple(Engine.values())
"""Values of `--engine` (kept for callers of 0.1; the enum is `mmib_cli.choices.Engine`)."""

SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".jsonl"
_READ_BLOCK_LINES = 1024  # rows per block yielded by the reader


@dataclass
class RayOptions:
    """How `run_ray` uses Ray (see `mmib annotate --help`).

    Attributes:
        address: Ray cluster to join (`auto`, `ray://HOST:10001`, `HOST:6379`); None starts a local Ray instance
            (or joins `$RAY_ADDRESS`). Ignored when `ray.init` was already called in this process.
        concurrency: annotator actors (each loads the model once); None autoscales between 1 and what the cluster
            holds (its GPUs / `gpus_per_worker`, else its CPUs).
        gpus_per_worker: GPUs per annotator actor (fractions share a GPU); 0 runs the actors on CPU.
        rows_per_file: most output lines per shard file.
    """

    address: str | None = None
    concurrency: int | None = None
    gpus_per_worker: float = 0.0
    rows_per_file: int = 10_000

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise UsageError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.gpus_per_worker < 0:
            raise UsageError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.rows_per_file < 1:
            raise UsageError(f"rows_per_file must be >= 1, got {self.rows_per_file}")

    @classmethod
    def from_cli(cls, options: dict[str, Any]) -> RayOptions | None:
        """Pop `address`, `concurrency`, `gpus_per_worker` from CLI options (`engine` stays).

        Returns:
            RayOptions for `--engine ray`, None for another engine.

        Raises:
            UsageError: a Ray option was given without `--engine ray`, or a value is out of range.
        """
        engine = Engine.parse(options.get("engine") or Engine.LOCAL, what="--engine")
        values = {key: options.pop(key, None) for key in ("address", "concurrency", "gpus_per_worker")}
        if engine is not Engine.RAY:
            given = [f"--{key.replace('_', '-')}" for key, value in values.items() if value is not None]
            if given:
                raise UsageError(f"{', '.join(given)}: only with --engine ray")
            return None
        return cls(address=values["address"], concurrency=values["concurrency"],
                   gpus_per_worker=float(values["gpus_per_worker"] or 0.0))


# -- the annotate stage ---------------------------------------------------------------------------------------
class RayAnnotator:
    """Callable class for `ray.data.Dataset.map_batches`: annotates batches exactly like the local pipeline.

    The model is loaded once per actor. A batch (`batch_format="numpy"`) holds the columns `line` (1-based input
    line), `record` (the input object as JSON text) and `error` (JSON `[id, line, type, message]` of a line that
    could not be read, else empty), as written by the reader of `run_ray` (`encode_line` builds one row). The
    output batch holds `line` and `record`: the output line as UTF-8 bytes, newline included, exactly as the local
    pipeline writes it.

    Example:
        >>> ds.map_batches(RayAnnotator, fn_constructor_kwargs={"model": "mmib-default"}, batch_size=128,
        ...                batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1)

    Args:
        model: registry name, checkpoint directory or hub id (resolvable on every worker).
        mode: `annotate`, `annotate+relations` or `relations`.
        relation_settings: `RelationSettings` fields.
        prepare_settings: `PrepareSettings` fields except the image preprocessing (taken from the model).
        device, dtype, online: as for `Annotator.from_pretrained`.
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, mode: Mode | str = Mode.ANNOTATE,
                 relation_settings: Mapping[str, Any] | None = None,
                 prepare_settings: Mapping[str, Any] | None = None, device: str = DEFAULT_DEVICE,
                 dtype: DType | str = DType.AUTO, online: bool | None = None) -> None:
        from mmib_cli.offline import configure_network

        configure_network(online)  # before transformers is imported in this worker
        from mmib_cli.annotation.annotator import Annotator, RelationSettings
        from mmib_cli.console import quiet_transformers

        quiet_transformers()  # as the CLI does: no loading bars from every actor

        self.annotator = Annotator.from_pretrained(model, device=device, dtype=dtype, online=online)
        self.mode = Mode.parse(mode, what="mode")
        self.relation_settings = RelationSettings(**dict(relation_settings or {}))
        self.settings = self.annotator.prepare_settings(self.mode, self.relation_settings,
                                                        **dict(prepare_settings or {}))

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Annotate one batch (see the class docstring for the columns)."""
        from mmib_cli.annotation.preprocess import prepare

        chunk = [prepare(int(line), decode_line(record, error), self.settings)
                 for line, record, error in zip(batch["line"], batch["record"], batch["error"])]
        records = self.annotator.process(chunk, self.mode, self.relation_settings)
        return {"line": np.array([int(r["line"]) for r in records], dtype=np.int64),
                "record": np.array([encode_record(r)[0] for r in records], dtype=object)}


def encode_line(line: int, value: dict[str, Any] | ErrorRecord | SkippedRecord) -> dict[str, Any]:
    """One reader row for `RayAnnotator`: a parsed input line, or the error/skipped record of an unusable one.

    JSON with ASCII escapes round-trips any parsed value (lone surrogates, key order) through Arrow strings.
    """
    if isinstance(value, (ErrorRecord, SkippedRecord)):
        return {"line": line, "record": "", "error": json.dumps(value.to_json(), ensure_ascii=True)}
    return {"line": line, "record": json.dumps(value, ensure_ascii=True), "error": ""}


def decode_line(record: str, error: str) -> dict[str, Any] | ErrorRecord | SkippedRecord:
    """Inverse of `encode_line`."""
    if error:
        return marker_from_json(json.loads(error))
    return json.loads(record)


def _line_blocks(stream: io.BufferedIOBase, opts: RunOptions, block_lines: int = _READ_BLOCK_LINES) -> Iterator[Any]:
    """Yield pyarrow tables of `encode_line` rows for the lines the run selects (`RunOptions.select`, as locally)."""
    import pyarrow as pa

    rows: list[dict[str, Any]] = []
    for line, value in opts.select(read_lines(stream, max_line_bytes=DEFAULT_MAX_LINE_BYTES)):
        rows.append(encode_line(line, value))
        if len(rows) >= block_lines:
            yield pa.Table.from_pylist(rows, schema=_read_schema())
            rows = []
    if rows:
        yield pa.Table.from_pylist(rows, schema=_read_schema())


def _read_schema() -> Any:
    """Arrow schema of the reader rows (pyarrow comes with the ray extra)."""
    import pyarrow as pa

    return pa.schema([("line", pa.int64()), ("record", pa.large_string()), ("error", pa.large_string())])


def _jsonl_datasource(opts: RunOptions) -> Any:
    """A Ray datasource streaming one JSONL file (compression inferred from the name) as `encode_line` rows."""
    from ray.data.datasource import FileBasedDatasource

    class JSONLLinesDatasource(FileBasedDatasource):  # defined here so ray is imported lazily
        def __init__(self, paths: str, opts: RunOptions) -> None:
            super().__init__(paths)
            self._mmib_opts = opts

        def _read_stream(self, f: Any, path: str) -> Iterator[Any]:
            yield from _line_blocks(io.BufferedReader(f, 1 << 20), self._mmib_opts)

    return JSONLLinesDatasource(opts.input_path, opts)


# -- the write stage ------------------------------------------------------------------------------------------
def _filesystem(location: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path) of a local path or a URI."""
    from pyarrow import fs as pafs

    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def _write_shard(batch: Mapping[str, np.ndarray], *, output: str) -> dict[str, np.ndarray]:
    """Write one batch of annotated rows as `OUTPUT/part-<first line>.jsonl`; return its counts as one row."""
    lines, records = batch["line"], batch["record"]
    if len(lines) == 0:
        return {"file": np.array([], dtype=object), "summary": np.array([], dtype=object)}
    summary = RunSummary()
    order = np.argsort(lines, kind="stable")
    name = f"{SHARD_PREFIX}{int(lines[order[0]]):012d}{SHARD_SUFFIX}"
    fs, root = _filesystem(output)
    temporary = f"{root}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        if is_uri(output):
            with fs.open_output_stream(temporary) as out:
                for i in order:
                    data = bytes(records[i])
                    out.write(data)
                    summary.count(json.loads(data))
            fs.move(temporary, f"{root}/{name}")  # a retried task rewrites the same name
        else:  # a local directory: the one output-safety path (a new temporary file, never a planted link)
            from mmib_cli.io.safefile import write_atomic

            data = b"".join(bytes(records[i]) for i in order)
            for i in order:
                summary.count(json.loads(bytes(records[i])))
            write_atomic(Path(root) / name, data, temporary=temporary, fsync=False)
    except (OSError, MMIBError) as exc:  # a full disk, a lost mount: one clear line on the driver, no half shard
        with contextlib.suppress(OSError):
            fs.delete_file(temporary)
        reason = getattr(exc, "strerror", None) or str(exc).rpartition(": ")[2] or exc
        raise OutputWriteError(f"cannot write shard {root}/{name}: {reason}") from exc
    return {"file": np.array([name], dtype=object), "summary": np.array([json.dumps(summary.counts())], dtype=object)}


def _prepare_output_dir(output: str, *, force: bool) -> None:
    """Create OUTPUT_DIR; refuse a non-empty one without --force; with --force remove its old shards.

    Raises:
        OutputExists: OUTPUT_DIR is a file, or is not empty and `force` is false.
    """
    from pyarrow import fs as pafs

    fs, root = _filesystem(output)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise OutputExists(f"output {output} is a file; --engine ray writes a directory of JSONL shards")
    if info.type == pafs.FileType.Directory:
        entries = fs.get_file_info(pafs.FileSelector(root))
        if entries and not force:
            raise OutputExists(f"output directory {output} is not empty: pass --force to replace its shards")
        for entry in entries:
            base = entry.base_name
            if entry.type == pafs.FileType.File and (
                    (base.startswith(SHARD_PREFIX) and base.endswith(SHARD_SUFFIX))
                    or (base.startswith(f".{SHARD_PREFIX}") and base.endswith(".tmp"))):
                fs.delete_file(entry.path)
    fs.create_dir(root, recursive=True)


# -- the driver -----------------------------------------------------------------------------------------------
def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MMIBError('--engine ray needs Ray Data: pip install "mmib[ray]" (or pip install "ray[data]")') from exc
    return ray


def _check_input(input_path: str) -> None:
    """Fail early when INPUT is not one readable file (a local path or a URI).

    Raises:
        UsageError: INPUT does not exist or is a directory. MMIBError: its filesystem cannot be reached.
    """
    from pyarrow import fs as pafs

    try:
        fs, path = _filesystem(input_path)
        info = fs.get_file_info(path)
    except Exception as exc:  # noqa: BLE001 - any filesystem/credential problem
        raise MMIBError(f"cannot read input {input_path}: {exc}") from exc
    if info.type != pafs.FileType.File:
        raise UsageError(f"input {input_path} does not exist or is not a file")


def _check_model(opts: RunOptions) -> str:
    """Resolve the model on the driver and check it has the parts the command needs; return its label.

    Raises:
        MMIBError: the model cannot be resolved, or lacks the ner/re part the command needs.
    """
    from mmib_cli.storage.resolve import resolve_model
    from mmib_cli.storage.format import read_bundle, read_config

    resolved = resolve_model(opts.model, online=opts.online)
    parts = read_bundle(resolved.path) or {"single": resolved.path}
    opts.check_tasks({read_config(path).get("task") for path in parts.values()}, resolved.label)
    return resolved.label


def _find_mmib_error(exc: BaseException) -> MMIBError | None:
    """The MMIBError behind a Ray task/actor failure, if any (Ray wraps exceptions raised in workers)."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, MMIBError):
            return current
        todo.extend(getattr(current, name, None) for name in ("cause", "__cause__", "__context__"))
    return None


def _actor_pool(ray: Any, ray_options: RayOptions) -> Any:
    """A fixed pool of `concurrency` actors, else one autoscaling up to what the cluster holds."""
    if ray_options.concurrency is not None:
        return ray.data.ActorPoolStrategy(size=ray_options.concurrency)
    resources = ray.cluster_resources()
    if ray_options.gpus_per_worker > 0:
        most = int(resources.get("GPU", 0) / ray_options.gpus_per_worker)
    else:
        most = int(resources.get("CPU", 1))
    return ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, most))


@engine(Engine.RAY)
def run_ray(opts: RunOptions, ray_options: RayOptions | None = None, model: ModelInfo | None = None) -> RunSummary:
    """Annotate `opts.input_path` on Ray Data into JSONL shards in the directory `opts.output`.

    Output records, error records and summary counts are those of `run_pipeline` on the same input; a shard named
    `part-*.jsonl` is always complete. Joins the Ray instance this process already initialised, else
    `ray_options.address` (starting a local one when None, shut down at the end).

    Args:
        opts: the run options (`RunOptions.from_cli`); `num_workers` does not apply.
        ray_options: cluster address, actor count, GPUs per actor.

    Returns:
        The run summary; `exit_code` 3 when some lines became error records, 130 when interrupted.

    Raises:
        MMIBError: Ray is not installed, the model cannot be resolved or lacks a needed part, the output directory
            is not empty without `force` (exit 2), or the run failed on the cluster because of one of these.
        UsageError: stdin/stdout or `--resume`, or an input that is not a file.
    """
    ray_options = ray_options or RayOptions()
    start = time.perf_counter()
    opts = replace(opts, engine=Engine.RAY).check()
    summary = RunSummary()
    with interruptible(), _output_lock(opts.output):
        try:
            _run(opts, ray_options, summary, model)
        except (Interrupted, KeyboardInterrupt) as exc:
            summary.interrupted(getattr(exc, "signum", signal.SIGINT))
            logger.warning("interrupted: the complete shards written so far are kept in %s; rerun with --force",
                           opts.output)
    return summary.finish(time.perf_counter() - start)


def _output_lock(output: str) -> Any:
    """The exclusive lock of a local output directory (`OUTPUT_DIR.lock`); none for a URI."""
    if is_uri(output):
        return nullcontext()
    from mmib_cli.io.safefile import check_output_name, output_target

    target = output_target(output)  # a symlinked OUTPUT_DIR is followed; its lock sits next to the target
    check_output_name(target, (".lock",))
    target.parent.mkdir(parents=True, exist_ok=True)
    return OutputLock(target)


def _run(opts: RunOptions, ray_options: RayOptions, summary: RunSummary, model: ModelInfo | None) -> None:
    """`model`: resolved and checked on the driver by `runs.preflight` (None when `run_ray` is called directly);
    each actor loads `opts.model` itself, since a cluster's machines may keep checkpoints in other places."""
    ray = _import_ray()
    label = model.label if model is not None else _check_model(opts)
    _check_input(opts.input_path)
    _prepare_output_dir(opts.output, force=opts.force)
    if opts.num_workers:
        logger.debug("--num-workers does not apply to --engine ray (records are prepared in the actors)")
    started = not ray.is_initialized()
    if started:
        init_args: dict[str, Any] = {"address": ray_options.address, "logging_level": logging.WARNING}
        if ray_options.address is None:
            init_args["include_dashboard"] = False
        ray.init(**init_args)
    try:
        dataset = _build_dataset(ray, opts, ray_options)
        logger.info("annotating %s with %s on Ray (%s actors, %g GPU each) into %s", opts.input_path, label,
                    ray_options.concurrency or "autoscaled", ray_options.gpus_per_worker, opts.output)
        try:
            for row in dataset.iter_rows():
                summary.merge(json.loads(row["summary"]))
        except Exception as exc:
            cause = _find_mmib_error(exc)
            if cause is not None:
                raise cause from exc
            raise
    finally:
        if started:
            ray.shutdown()


def _build_dataset(ray: Any, opts: RunOptions, ray_options: RayOptions) -> Any:
    """read → annotate (actors) → write shards; rows of the result are per-shard counts."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = bool(opts.progress)
    gpus = ray_options.gpus_per_worker
    device = "cpu" if opts.device == "auto" and gpus == 0 else opts.device
    dataset = ray.data.read_datasource(_jsonl_datasource(opts))
    annotated = dataset.map_batches(
        RayAnnotator,
        fn_constructor_kwargs={"model": opts.model, "mode": str(opts.mode),
                               "relation_settings": asdict(opts.relation_settings),
                               "prepare_settings": opts.prepare_fields(), "device": device, "dtype": opts.dtype,
                               "online": opts.online},
        batch_size=opts.chunk_rule.size, batch_format="numpy",
        compute=_actor_pool(ray, ray_options), num_gpus=gpus or None)
    return annotated.map_batches(_write_shard, fn_kwargs={"output": opts.output},
                                 batch_size=ray_options.rows_per_file, batch_format="numpy")

