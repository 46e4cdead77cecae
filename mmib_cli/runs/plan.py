"""What one run of `mmib annotate` / `mmib relations` is, whichever engine runs it (torch-free).

A `RunOptions` holds the checked command-line values; from it every engine takes the same mode, line selection,
prepare and relation settings, task check and chunk size. An engine (`engines/local.py` on this machine,
`engines/ray.py` on Ray) only decides where the work runs.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mmib_cli.choices import (DEFAULT_BATCH_SIZE, DEFAULT_DEVICE, DEFAULT_MAX_PAIRS, DEFAULT_MAX_TOKENS, DEFAULT_MODEL,
                              Command, DType, Engine, Mode, OnMissingImage)
from mmib_cli.errors import InvalidCheckpoint, UsageError
from mmib_cli.io.jsonl import input_base_dir
from mmib_cli.settings import PrepareSettings, RelationSettings
from mmib_cli.io.sniff import sniff_input

__all__ = ["CHUNK_BATCHES", "CHUNK_IMAGE_BATCHES", "ENGINE_TRAITS", "ChunkRule", "EngineTraits", "PrepareSettings",
           "RelationSettings", "RunOptions", "is_uri", "parse_shard"]

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineTraits:
    """What an engine's input and output can be."""

    stdio: bool  # reads stdin and writes stdout
    resume: bool  # continues an interrupted output
    uris: bool  # reads and writes pyarrow URIs (s3://...)
    output: str  # "file" or "directory"


ENGINE_TRAITS = {
    Engine.LOCAL: EngineTraits(stdio=True, resume=True, uris=False, output="file"),
    Engine.RAY: EngineTraits(stdio=False, resume=False, uris=True, output="directory"),
}
"""What each engine (`mmib_cli.engines`) can read and write, checked here before any engine is imported."""

CHUNK_BATCHES = 16
"""Default posts per chunk, in batches. A chunk is the window within which posts are sorted by length before being
cut into batches: on 2,000 tweet-like posts 87% of the padded pieces are real with the default chunks (83% when half
the posts have photos and chunks close at the photo cap) against 74% with fixed 4-batch chunks (benchmarks/README.md)."""
CHUNK_IMAGE_BATCHES = 4
"""A default chunk closes early once it holds this many batches' worth of posts with a photo, so the photos queued
between the reader and the model stay bounded (each is a 150 KB uint8 crop at 224 px; benchmarks/README.md)."""


@dataclass(frozen=True)
class ChunkRule:
    """How posts are grouped between the reader and the model.

    Attributes:
        size: posts per chunk.
        max_images: a chunk also closes once it holds this many posts naming an image (None: no cap).
        first: chunk k holds at most `first * 2**k` posts, so the model starts after one small chunk (None: off).
    """

    size: int
    max_images: int | None = None
    first: int | None = None


def _check_input_path(input_path: str) -> None:
    """Accept `-`, a file, or a readable stream (a FIFO, `<(zcat a.gz)`); raise a UsageError naming what it is else."""
    if input_path == "-":
        return
    path = Path(input_path)
    if path.is_dir():
        raise UsageError(f"input {input_path} is a directory; give a JSONL file (or - for stdin)")
    if not path.exists():
        raise UsageError(f"input {input_path} does not exist")
    if not os.access(path, os.R_OK):
        raise UsageError(f"input {input_path} is not readable (permission denied)")


def _check_not_input(input_path: str, output: str, output_kind: str) -> None:
    """Refuse an output (or a file next to it) that is the input, and an input inside an output directory."""
    from mmib_cli.io.safefile import output_target, refuse_same_file
    from mmib_cli.io.writer import SIDECAR_SUFFIXES

    if is_uri(input_path) or is_uri(output):
        return
    if output_kind == "directory":
        if input_path != "-" and output != "-":
            root, source = output_target(output), output_target(input_path)
            if root == source or root in source.parents:
                raise UsageError(f"input {input_path} is inside the output directory {output}, whose shards "
                                 "this run replaces: give another -o")
        return
    if output == "-":
        refuse_same_file([input_path], ["-"])
        return
    target = output_target(output)
    refuse_same_file([input_path], [target, *(target.with_name(target.name + s) for s in SIDECAR_SUFFIXES)])


def _check_stdio(input_path: str, output: str) -> None:
    """`-` needs an open stdin / stdout (a scheduler may start mmib with them closed: `<&-`, `>&-`)."""
    import sys

    from mmib_cli.errors import InputUnreadable, MMIBError

    if input_path == "-" and sys.stdin is None:
        raise InputUnreadable("INPUT is - but stdin is closed (<&-): give a file, or pipe posts into mmib")
    if output == "-" and sys.stdout is None:
        raise MMIBError("-o - writes to stdout, but stdout is closed (>&-): give -o FILE")


def is_uri(path: str) -> bool:
    """Whether `path` is a URI such as `s3://bucket/key` rather than a local path."""
    return "://" in path


def parse_shard(value: str) -> tuple[int, int]:
    """`I/N` with 1 <= I <= N → (I, N); lines whose (number - 1) % N == I - 1 belong to shard I.

    Raises:
        UsageError: not of the form I/N with 1 <= I <= N.
    """
    try:
        index, total = (int(x) for x in value.split("/"))
    except ValueError:
        raise UsageError(f"--shard expects I/N such as 2/8, got {value!r}") from None
    if not 1 <= index <= total:
        raise UsageError(f"--shard {value}: need 1 <= I <= N")
    return index, total


@dataclass
class RunOptions:
    """Everything `mmib annotate` / `mmib relations` take (see their --help), checked by `from_cli`."""

    task: Command
    input_path: str
    output: str
    engine: Engine = Engine.LOCAL
    model: str = DEFAULT_MODEL
    relations: bool = False
    pair: bool = False
    min_score: float | None = None  # None: the RE checkpoint's relation_min_score, else DEFAULT_MIN_SCORE
    max_pairs: int = DEFAULT_MAX_PAIRS
    keep_none: bool = False
    type_constraints: bool = True
    batch_size: int = DEFAULT_BATCH_SIZE  # posts per reader batch: chunking only, never a record
    num_workers: int | None = None
    on_missing_image: OnMissingImage = OnMissingImage.TEXT_ONLY
    image_root: str | None = None
    confine_images: bool = False
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
    chunk_size: int = 0  # posts per prepared chunk; 0 = the default ChunkRule

    def __post_init__(self) -> None:
        self.task = Command.parse(self.task, what="task")
        self.engine = Engine.parse(self.engine, what="engine")
        self.on_missing_image = OnMissingImage.parse(self.on_missing_image, what="on_missing_image")
        self.dtype = DType.parse(self.dtype, what="dtype")

    @classmethod
    def from_cli(cls, **options: Any) -> RunOptions:
        """Check command-line values and build the options (local paths made absolute for Ray workers).

        Raises:
            UsageError: contradictory options, a bad `--shard`, an input that is not a file, or something the
                chosen engine cannot do (stdin/stdout, `--resume`).
        """
        shard = options.pop("shard", None)
        if options.pop("max_tokens", DEFAULT_MAX_TOKENS) != DEFAULT_MAX_TOKENS:
            logger.warning("--max-tokens is ignored: every model call has a fixed shape (see Reproducible output)")
        return cls(shard=parse_shard(shard) if shard else None, **options).check()

    def check(self) -> RunOptions:
        """Check the values together (idempotent; every engine calls it first); returns self.

        Raises:
            UsageError: see `from_cli`.
        """
        traits = ENGINE_TRAITS[self.engine]
        if self.resume and self.force:
            raise UsageError("use either --resume or --force, not both")
        if not traits.stdio and "-" in (self.input_path, self.output):
            raise UsageError(f"--engine {self.engine} reads a file and writes a directory of shards: stdin/stdout "
                             "(-) are not supported")
        if self.resume and not traits.resume:
            raise UsageError(f"--resume is not supported with --engine {self.engine}; rerun with --force "
                             "(finished shards are rewritten)")
        if self.resume and self.output == "-":
            raise UsageError("--resume needs an output file, not stdout")
        for name, value in (("input", self.input_path), ("-o", self.output)):
            if is_uri(value) and not traits.uris:
                raise UsageError(f"{name} {value}: URIs need --engine ray")
        if not is_uri(self.input_path):
            _check_input_path(self.input_path)
            sniff_input(self.input_path, text_field=self.text_field)  # a JSON array, CSV... before the model loads
        if self.resume and self.input_path == "-":
            raise UsageError("--resume needs INPUT to be a regular file it can check against the interrupted run, "
                             "not stdin")
        _check_not_input(self.input_path, self.output, traits.output)
        _check_stdio(self.input_path, self.output)
        if traits.uris:  # workers may run in another directory
            for key in ("input_path", "output", "image_root"):
                value = getattr(self, key)
                if value and value != "-" and not is_uri(value):
                    setattr(self, key, str(Path(value).resolve()))
        return self

    # -- what the run does ----------------------------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        """The annotator mode of this command."""
        if self.task == Command.RELATIONS:
            return Mode.RELATIONS
        return Mode.ANNOTATE_RELATIONS if self.relations else Mode.ANNOTATE

    @property
    def relation_settings(self) -> RelationSettings:
        """Relation options: `annotate --relations` classifies every found pair, `relations` the given ones."""
        return RelationSettings(pair=self.pair or self.task == Command.ANNOTATE, min_score=self.min_score,
                                keep_none=self.keep_none, type_constraints=self.type_constraints,
                                max_pairs=self.max_pairs)

    def prepare_fields(self) -> dict[str, Any]:
        """`PrepareSettings` fields except the image size (the model's): relative images resolve against the
        input's folder (the working directory for stdin and URIs) unless `--image-root` is given."""
        base_dir = Path.cwd() if is_uri(self.input_path) else input_base_dir(self.input_path)
        return {"id_field": self.id_field, "text_field": self.text_field, "image_field": self.image_field,
                "base_dir": base_dir, "on_missing_image": self.on_missing_image,
                "image_root": Path(self.image_root) if self.image_root else None,
                "confine_images": self.confine_images}

    @property
    def chunk_rule(self) -> ChunkRule:
        """`--chunk-size` posts per chunk, else CHUNK_BATCHES batches, starting small, capped on photos."""
        if self.chunk_size:
            return ChunkRule(self.chunk_size)
        return ChunkRule(CHUNK_BATCHES * self.batch_size, max_images=CHUNK_IMAGE_BATCHES * self.batch_size,
                         first=self.batch_size)

    def select(self, lines: Iterable[tuple[int, T]], done: Collection[int] = ()) -> Iterator[tuple[int, T]]:
        """The `(line, value)` pairs this run annotates: up to `--limit`, in `--shard`, not `done` by a resumed run."""
        for line, value in lines:
            if self.limit is not None and line > self.limit:
                return
            if self.shard and (line - 1) % self.shard[1] != self.shard[0] - 1:
                continue
            if line in done:
                continue
            yield line, value

    def selected_count(self, lines: int, done: Collection[int] = ()) -> int:
        """How many of an input's first `lines` lines `select` yields (the progress total of a run)."""
        last = min(lines, self.limit) if self.limit is not None else lines
        first, step = (self.shard[0], self.shard[1]) if self.shard else (1, 1)
        selected = len(range(first, last + 1, step))
        return selected - sum(1 for line in done
                              if line <= last and (not self.shard or (line - 1) % step == first - 1))

    def progress_total(self, done: Collection[int] = ()) -> Callable[[], int | None] | None:
        """A function counting the lines this run annotates (for `console.Progress`, which runs it in a
        background thread); None when INPUT is stdin, a pipe or a URI, whose length is unknown."""
        if self.input_path == "-" or is_uri(self.input_path):
            return None
        from mmib_cli.io.sniff import count_lines

        def total() -> int | None:
            lines = count_lines(self.input_path)
            return None if lines is None else self.selected_count(lines, done)

        return total

    def check_tasks(self, available: Collection[str], model_label: str) -> None:
        """Fail before any output is written when the model lacks the part (ner/re) the command needs.

        Args:
            available: the task models the checkpoint holds (`"ner"`, `"re"`).
            model_label: `name@revision`, for the message.

        Raises:
            InvalidCheckpoint: a needed part is missing.
        """
        needed = [("ner", self.task == Command.ANNOTATE), ("re", self.mode != Mode.ANNOTATE)]
        missing = [task for task, need in needed if need and task not in available]
        if missing:
            what = " and ".join("an entity (ner) model" if t == "ner" else "a relation (re) model" for t in missing)
            raise InvalidCheckpoint(f"model {model_label} has no {what}, which `mmib {self.task}"
                                    f"{' --relations' if self.relations else ''}` needs; pass a bundle with ner/ "
                                    "and re/ parts to --model (see `mmib models`)")
