"""Click options shared by several commands, defined once so they are spelled and documented the same."""
from __future__ import annotations

from typing import Callable

import click

from mmib_cli.choices import (DEFAULT_BATCH_SIZE, DEFAULT_DEVICE, DEFAULT_MAX_PAIRS, DEFAULT_MAX_TOKENS, DEFAULT_MODEL,
                              Choice, DType, Engine, OnMissingImage)

F = Callable[..., object]


def choice(enum: type[Choice]) -> click.Choice:
    """A click choice of an enum's values (the parameter arrives as the plain string value)."""
    return click.Choice(enum.values())


def model_option(func: F) -> F:
    return click.option("-m", "--model", default=DEFAULT_MODEL, show_default=True,
                        help="Registry name, local checkpoint directory, or hub id ORG/NAME[@REVISION].")(func)


def device_options(func: F) -> F:
    func = click.option("--dtype", type=choice(DType), default=DType.AUTO.value,
                        show_default=True, help="Compute dtype; auto = half precision on CUDA, float32 otherwise.")(func)
    func = click.option("-d", "--device", default=DEFAULT_DEVICE, show_default=True,
                        help="auto, cpu, cuda, cuda:N or mps.")(func)
    return func


def pipeline_options(func: F) -> F:
    """Options of the streaming annotation commands (annotate, relations)."""
    opts = [
        click.option("-o", "--output", required=True, help="Output JSONL file, or - for stdout."),
        model_option,
        click.option("-b", "--batch-size", type=click.IntRange(1), default=DEFAULT_BATCH_SIZE, show_default=True,
                     help="Posts per reader batch (a chunk holds 16): memory and progress steps only; model calls "
                          "have a fixed shape, so it never changes a record."),
        click.option("--max-tokens", type=click.IntRange(16), default=DEFAULT_MAX_TOKENS, hidden=True,
                     help="Ignored (kept so existing scripts run): every model call has a fixed shape."),
        click.option("--num-workers", type=click.IntRange(0), default=None,
                     help="Worker processes for reading, tokenising and image decoding; 0 = a background thread "
                          "(default: 0 on CPU, 2 on GPU)."),
        click.option("--max-pairs", type=click.IntRange(0), default=DEFAULT_MAX_PAIRS, show_default=True,
                     help="(relations) Most ordered entity pairs scored per post, nearest pairs first; a post with "
                          "more says so in `relations_capped`. 0 = no cap."),
        click.option("--on-missing-image", type=choice(OnMissingImage), default=OnMissingImage.TEXT_ONLY.value,
                     show_default=True, help="What to do when a post's image is missing or unreadable."),
        click.option("--image-root", type=click.Path(file_okay=False, path_type=str), default=None,
                     help="Directory that relative image paths resolve against (default: the input file's)."),
        click.option("--confine-images", is_flag=True,
                     help="Read only images under the image root (--image-root, else the input's folder), symlinks "
                          "resolved; others are ImageOutsideRoot (for posts from untrusted sources)."),
        click.option("--id-field", default="id", show_default=True, help="Input field holding the post id."),
        click.option("--text-field", default="text", show_default=True, help="Input field holding the text."),
        click.option("--image-field", default="image", show_default=True, help="Input field holding the image path."),
        click.option("--limit", type=click.IntRange(1), default=None, help="Stop after N input lines."),
        click.option("--shard", default=None, metavar="I/N",
                     help="Process only lines whose number modulo N equals I-1 (1 <= I <= N)."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run: skip lines already written."),
        click.option("-F", "--force", is_flag=True, help="Overwrite an existing output file."),
        click.option("--progress/--no-progress", default=True, show_default=True,
                     help="Progress bar on a terminal (plain periodic log lines otherwise)."),
        click.option("--engine", type=choice(Engine), default=Engine.LOCAL.value, show_default=True,
                     help="local: this machine; ray: Ray Data (pip install \"mmib[ray]\"), -o is then a directory "
                          "of JSONL shards."),
        click.option("--address", default=None, metavar="auto|ray://HOST:PORT",
                     help="(--engine ray) Ray cluster to join (default: start a local Ray instance)."),
        click.option("--concurrency", type=click.IntRange(1), default=None,
                     help="(--engine ray) annotator actors, each loading the model once (default: autoscale)."),
        click.option("--gpus-per-worker", type=click.FloatRange(0), default=None,
                     help="(--engine ray) GPUs per annotator actor, e.g. 1 or 0.5 (default 0: CPU)."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return device_options(func)


RUN_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Input and output", ("output", "id_field", "text_field", "image_field", "image_root", "confine_images",
                          "on_missing_image", "limit", "shard", "resume", "force")),
    ("Model", ("model", "device", "dtype")),
    ("Relations", ("relations", "pair", "min_score", "keep_none", "type_constraints", "max_pairs")),
    ("Performance", ("batch_size", "max_tokens", "num_workers", "progress")),
    ("Engine (Ray)", ("engine", "address", "concurrency", "gpus_per_worker")),
)
"""The option sections of `mmib annotate --help` and `mmib relations --help`, in order (the rest: "Other")."""

RUN_EPILOG = """\b
Input:
  JSONL, one JSON object per line: {"id": "p1", "text": "...", "image": "photos/p1.jpg"};
  only the text is needed (--id-field, --text-field, --image-field rename the fields).
  gzip, bzip2 and xz files are read as they are; - is stdin. A JSON array, CSV/TSV or
  plain text is refused before the model loads, with the command that converts it
  (a JSON array: jq -c '.[]' posts.json > posts.jsonl).

\b
Exit codes:
  0        every line annotated
  1        fatal: the model or the output failed (complete lines stay in OUTPUT.partial)
  2        usage error: a bad option or input format, an existing output without --force
  3        finished, but some lines became error records
  130/143  interrupted by SIGINT/SIGTERM: rerun with --resume
  141      stdout was closed by its reader (-o - | head)"""


class SectionedCommand(click.Command):
    """A command whose --help lists its options in titled sections (`sections`), then the epilog."""

    def __init__(self, *args: object, sections: tuple[tuple[str, tuple[str, ...]], ...] = (),
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sections = sections

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {param.name: param.get_help_record(ctx) for param in self.get_params(ctx)
                   if isinstance(param, click.Option)}
        shown: set[str | None] = set()
        for title, names in self.sections:
            rows = [records[name] for name in names if records.get(name)]
            shown.update(names)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)  # type: ignore[arg-type]
        rest = [record for name, record in records.items() if name not in shown and record]
        if rest:
            with formatter.section("Other options"):
                formatter.write_dl(rest)  # type: ignore[arg-type]
