"""The `mmib` command line: thin click commands over the library API (see the README for a reference)."""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
from typing import Any

import click

from mmib_cli._version import __version__
from mmib_cli.errors import ExitCode, MMIBError, UsageError
from mmib_cli.io.safefile import display_path
from mmib_cli.choices import DEFAULT_BATCH_SIZE, DEFAULT_MODEL, DEFAULT_TRAIN_BATCH_SIZE, ModelTask
from mmib_cli.options import (RUN_EPILOG, RUN_SECTIONS, SectionedCommand, choice, device_options, model_option,
                              pipeline_options)

logger = logging.getLogger("mmib_cli")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="mmib")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("--online/--offline", default=None,
              help="Allow the Hugging Face hub (default offline unless MMIB_OFFLINE=0; `download` goes online "
                   "unless --offline or MMIB_OFFLINE=1).")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, online: bool | None) -> None:
    """Annotate social-media posts (text + photo) with entities and relations using MMIB."""
    from mmib_cli.console import setup_logging
    from mmib_cli.offline import configure_network, network_choice

    choice = network_choice(online)
    ctx.obj = {"online": configure_network(online), "network_choice": choice, "verbose": verbose}
    setup_logging(-1 if quiet else verbose)


def _fail(exc: MMIBError) -> None:
    click.echo(f"Error: {exc}", err=True)
    sys.exit(int(exc.exit_code))


def _run(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a library function at the CLI boundary.

    A `UsageError` (a bad command-line value) becomes a click usage error (exit 2); another MMIBError becomes
    `Error: ...` on stderr plus its exit code; a failure to import the stack names its cause and fix
    (`stack.BrokenInstall`). Anything else is a bug: its traceback with `-v`, else one `Error:` line naming it
    (exit 1). Any error of a call during which SIGINT/SIGTERM arrived is the interruption (exit 130/143): native
    code may have turned the `Interrupted` raised inside it into an error of its own.
    """
    from mmib_cli.signals import received

    signals = len(received())
    try:
        return func(*args, **kwargs)
    except Exception as exc:
        if len(received()) > signals:  # native code (safetensors, torch) turned a signal's Interrupted into an error
            signum = received()[-1]
            logger.warning("interrupted by %s", signal.Signals(signum).name)
            sys.exit(128 + signum)
        if isinstance(exc, UsageError):
            raise click.UsageError(str(exc)) from exc
        if isinstance(exc, MMIBError):
            _fail(exc)
        ctx = click.get_current_context(silent=True)
        if ctx is None or (ctx.find_root().obj or {}).get("verbose"):
            raise
        from mmib_cli.stack import broken_install, is_broken_install

        if is_broken_install(exc):  # a torch/torchvision mismatch is not a bug in mmib: say what to install
            _fail(broken_install(exc))
        click.echo(f"Error: unexpected {type(exc).__name__}: {exc} (run with -v for the traceback)", err=True)
        sys.exit(int(ExitCode.FATAL))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def info(as_json: bool) -> None:
    """Show versions, devices, where checkpoints are looked up and which embedded ones are present.

    Also checks that the installed stack really works (a torchvision operator, a tiny BERT forward): exit 1, with
    the cause and the command that fixes it, when it does not.

    Example: mmib info --json
    """
    from mmib_cli.workflows.info import collect_info, render_info

    facts = _run(collect_info)
    click.echo(json.dumps(facts, indent=2) if as_json else render_info(facts))
    broken = [check for check in facts["stack"] if not check["ok"]]
    for check in broken:
        click.echo(f"Error: {check['name']} is broken: {check['detail']}; fix: {check['fix']}", err=True)
    if broken:
        sys.exit(int(ExitCode.FATAL))


@cli.command()
def models() -> None:
    """List registry checkpoints and what is available locally.

    Example: mmib models
    """
    from mmib_cli.workflows.info import list_models, render_models

    click.echo(render_models(_run(list_models)))


@cli.command()
@click.argument("model")
@click.option("--revision", default=None, help="Branch, tag or commit on the hub.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="Hub cache directory.")
@click.option("--token", default=None, envvar="HF_TOKEN", help="Hub access token (default: $HF_TOKEN).")
@click.option("-F", "--force", is_flag=True, help="Download again even if cached.")
@click.pass_obj
def download(obj: dict, model: str, revision: str | None, cache_dir: str | None, token: str | None,
             force: bool) -> None:
    """Fetch a checkpoint (registry name or hub id ORG/NAME[@REV]) into the local cache.

    Goes online by itself, unless --offline or MMIB_OFFLINE=1 (then only the cache is checked).

    Example: mmib download org/mmib-twitter@v1.0
    """
    from mmib_cli.offline import configure_network
    from mmib_cli.storage.resolve import fetch_model

    online = obj.get("network_choice")
    if online is None:  # nothing asked: this command's whole job is the network
        online = configure_network(True)
    resolved = _run(fetch_model, model, revision=revision, cache_dir=cache_dir, token=token, force=force,
                    online=online)
    click.echo(str(resolved.path))


@cli.command(cls=SectionedCommand, sections=RUN_SECTIONS, epilog=RUN_EPILOG)
@click.argument("input_path", metavar="INPUT")
@pipeline_options
@click.option("--relations/--no-relations", default=False, show_default=True,
              help="Also classify relations between every ordered pair of found entities.")
@click.pass_obj
def annotate(obj: dict, input_path: str, **options: Any) -> None:
    """Tag entities (and optionally relations) in a JSONL file of posts, one output line per input line.

    Example: mmib annotate samples/posts.jsonl -o out.jsonl
    (cat posts.jsonl | mmib annotate - -o - also works.)
    """
    _annotate_command(obj, input_path, task="annotate", options=options)


@cli.command(cls=SectionedCommand, sections=RUN_SECTIONS, epilog=RUN_EPILOG)
@click.argument("input_path", metavar="INPUT")
@pipeline_options
@click.option("--pair", is_flag=True, help="Classify every ordered entity pair of each post "
              "(entities from the input, or found by NER when absent).")
@click.option("--min-score", type=click.FloatRange(0, 1), default=None,
              help="Drop relations scored below this (default: the model's relation_min_score, else 0).")
@click.option("--keep-none", is_flag=True, help="Keep pairs classified as None.")
@click.option("--type-constraints/--no-type-constraints", default=True, show_default=True,
              help="Allow only relations whose MNRE signature fits the entity types (/per/org/... for PER→ORG).")
@click.pass_obj
def relations(obj: dict, input_path: str, **options: Any) -> None:
    """Classify relations between entity pairs of each post (given pairs, or all pairs with --pair).

    Example: mmib relations samples/posts.jsonl --pair -o relations.jsonl
    """
    _annotate_command(obj, input_path, task="relations", options=options)


def _annotate_command(obj: dict, input_path: str, *, task: str, options: dict[str, Any]) -> None:
    from mmib_cli.engines.ray import RayOptions
    from mmib_cli.engines import execute
    from mmib_cli.runs import RunOptions

    ray_options = _run(RayOptions.from_cli, options)  # pops --address/...; None unless --engine ray
    opts = _run(RunOptions.from_cli, task=task, input_path=input_path, online=obj.get("online"), **options)
    summary = _run(execute, opts, ray_options)
    sys.exit(int(summary.exit_code))


@cli.command()
@click.argument("task", type=choice(ModelTask))
@click.option("--train", "train_files", multiple=True, required=True, help="Training file(s); repeat to combine.")
@click.option("--valid", "valid_files", multiple=True,
              help="Validation file(s) for model selection (with a Label Studio export: the benchmark scored before "
                   "and after).")
@click.option("--images", type=click.Path(file_okay=False), default=None, help="Image directory (optional).")
@click.option("--text-encoder", default="minilm-l6", show_default=True,
              help="minilm-l6, a local HF directory or a hub id.")
@click.option("--image-encoder", default="efficientnet-lite0", show_default=True,
              help="efficientnet-lite0, resnet50[:WEIGHTS], tiny-cnn or none.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Checkpoint directory.")
@click.option("--config", "config_overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a model/training setting, e.g. --config beta_ar=0.1 (repeatable).")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True, help="Maximum number of epochs.")
@click.option("-b", "--batch-size", type=click.IntRange(1), default=DEFAULT_TRAIN_BATCH_SIZE, show_default=True,
              help="Training examples per step.")
@click.option("--lr", type=float, default=5e-5, show_default=True, help="Learning rate of the text encoder.")
@click.option("--head-lr", type=float, default=1e-3, show_default=True, help="Learning rate of the MMIB layers.")
@click.option("--warmup-ratio", type=click.FloatRange(0, 1), default=0.06, show_default=True,
              help="Fraction of the steps with a linear learning-rate warm-up.")
@click.option("--grad-accum", type=click.IntRange(1), default=1, show_default=True,
              help="Steps whose gradients are accumulated before each optimizer update.")
@click.option("--patience", type=click.IntRange(1), default=3, show_default=True,
              help="Stop after this many epochs without a better valid F1.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of python, numpy and torch.")
@click.option("--max-train", type=click.IntRange(1), default=None, help="Use only the first N training examples.")
@click.option("--resume", is_flag=True, help="Continue from OUTPUT/last/ if present.")
@click.option("--init", default=None, metavar="CHECKPOINT",
              help="Continue training from a checkpoint (directory, registry name such as mmib-default, or hub "
                   "id; a bundle gives its TASK part): its adapters, heads and MMIB layers are the start.")
@click.option("--select-init/--no-select-init", default=True, show_default=True,
              help="(with --init) Score the starting checkpoint as epoch 0, so only an epoch with a higher valid F1 "
                   "replaces it in OUTPUT; --no-select-init writes the best trained epoch even when it is worse "
                   "(for weight averaging).")
@click.option("--reverse-pairs/--no-reverse-pairs", default=False, show_default=True,
              help="(re) Add every training pair reversed: asymmetric relations as None, symmetric ones with "
                   "their label.")
@click.option("--reverse-pairs-weight", type=click.FloatRange(0, 1, min_open=True), default=1.0,
              show_default=True,
              help="(re) Loss weight of the reversed pairs that become None (below 1: teach direction more gently).")
@click.option("--lowercase-copies/--no-lowercase-copies", default=False, show_default=True,
              help="(ner) Add a lowercased copy of every training sentence, so entities written without capitals "
                   "are found too.")
@click.option("--mention-swaps/--no-mention-swaps", default=False, show_default=True,
              help="(ner) Add a copy of every training sentence whose entity mentions are replaced by random "
                   "mentions of the same type from the training files (seeded by --seed), so names never seen "
                   "are found from their context.")
@click.option("--num-workers", type=click.IntRange(0), default=0, show_default=True,
              help="DataLoader worker processes (image decoding).")
@click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="(Label Studio export) Fraction of the reviewed posts held out to score before/after and to "
                   "select the epoch on (seeded by --seed).")
@click.option("--use-predictions", is_flag=True,
              help="(Label Studio export) Also train on the predictions of tasks nobody annotated.")
@device_options
@click.pass_obj
def train(obj: dict, task: str, holdout: float, use_predictions: bool, **options: Any) -> None:
    """Train an MMIB checkpoint for NER or RE, selecting the best epoch on the valid split.

    A --train file that is a Label Studio JSON export (see mmib export) fine-tunes the --init checkpoint on the
    reviewed corrections and reports scores before and after.

    Example: mmib train ner --train t17/train.txt --valid t17/valid.txt -o ckpt/t17;
    mmib train ner --init mmib-default --train export.json --valid t17/valid.txt -o ckpt/corrected
    """
    from mmib_cli.workflows.finetune import finetune, wants_finetune
    from mmib_cli.workflows.train import TrainOptions, train as run_training

    opts = _run(TrainOptions.from_cli, task=task, **options)
    if wants_finetune(opts.train_files):
        result = _run(finetune, opts, holdout=holdout, use_predictions=use_predictions)
    elif not opts.valid_files:
        raise click.UsageError("--valid is required (it selects the epoch), except when training on a Label Studio "
                               "export")
    else:
        result = _run(run_training, opts)
    click.echo(json.dumps(result.summary(), indent=2))


@cli.command(name="eval")
@click.argument("task", type=choice(ModelTask))
@model_option
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="CoNLL or MNRE file.")
@click.option("--images", type=click.Path(file_okay=False), default=None, help="Image directory (optional).")
@click.option("--output-json", type=click.Path(dir_okay=False), default=None, help="Also write the metrics here.")
@click.option("-F", "--force", is_flag=True, help="Overwrite an existing --output-json file.")
@click.option("-b", "--batch-size", type=click.IntRange(1), default=DEFAULT_BATCH_SIZE, hidden=True,
              help="Ignored (kept so existing scripts run): every model call has a fixed shape.")
@device_options
@click.pass_obj
def evaluate(obj: dict, task: str, model: str, data: str, images: str | None, output_json: str | None,
             force: bool, batch_size: int, device: str, dtype: str) -> None:
    """Score a checkpoint on a labelled file: entity P/R/F1 (NER) or micro P/R/F1 without None (RE).

    Example: mmib eval ner --model mmib-default --data twitter2017/test.txt
    """
    from mmib_cli.io.textfile import check_writable
    from mmib_cli.storage.resolve import resolve_model

    if output_json:  # usage errors before torch is imported
        _run(check_writable, output_json, force=force, inputs=(data,))
    if images is not None and not os.path.isdir(images):
        raise click.UsageError(f"--images {images}: no such directory")
    _run(resolve_model, model, online=obj.get("online"))
    from mmib_cli.workflows.evaluate import evaluate_file, render_metrics, write_metrics

    metrics = _run(evaluate_file, task, model=model, data=data, images=images, device=device, dtype=dtype,
                   online=obj.get("online"))
    click.echo(render_metrics(metrics))
    if output_json:
        _run(write_metrics, metrics, output_json)


@cli.command()
@click.option("-m", "--model", required=True, type=click.Path(exists=True, file_okay=False),
              help="RE checkpoint directory, or a bundle directory (its re/ part); config.json is updated.")
@click.option("--data", "data_files", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="Labelled MNRE file(s) to calibrate on: the valid split, never the test split.")
@click.option("--precision", "target", type=click.FloatRange(0, 100), default=80.0, show_default=True,
              help="Precision (%) that relation_min_score must reach on --data.")
@click.option("--reverse-pairs/--no-reverse-pairs", default=True, show_default=True,
              help="Also score the annotated pairs read backwards (pair enumeration produces both directions).")
def calibrate(model: str, data_files: tuple[str, ...], target: float, reverse_pairs: bool) -> None:
    """Fit an RE checkpoint's relation_temperature and pick relation_min_score for a precision target.

    Example: mmib calibrate -m ckpt/re --data mnre/valid.txt --precision 80
    """
    from mmib_cli.workflows.calibration import calibrate_checkpoint

    result = _run(calibrate_checkpoint, model, data_files, precision=target, reverse_pairs=reverse_pairs)
    click.echo(json.dumps(result, indent=2))


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="HTML file to write.")
@click.option("--image-root", type=click.Path(file_okay=False), default=None,
              help="Directory that relative image paths resolve against (default: INPUT's folder).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Read only the first N lines.")
@click.option("--sample", type=click.IntRange(1), default=None, help="Show a random sample of N posts.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@click.option("--thumb-size", type=click.IntRange(0), default=160, show_default=True,
              help="Longest side of the embedded photo thumbnails in pixels (0: no photos).")
@click.option("--page-size", type=click.IntRange(1), default=50, show_default=True, help="Posts per page.")
@click.option("--title", default=None, help="Page title (default: the input file name).")
@click.option("--confine-images/--no-confine-images", default=True, show_default=True,
              help="Read only images under the image root (--image-root, else INPUT's folder), symlinks resolved; "
                   "--no-confine-images lets posts name any file (trusted input only).")
@click.option("-F", "--force", is_flag=True, help="Overwrite an existing output file.")
def report(input_path: str, **options: Any) -> None:
    """Write one self-contained HTML page to review an annotate output: highlights, photos, charts, filters.

    Example: mmib report out.jsonl -o report.html --image-root samples
    """
    from mmib_cli.workflows.report import ReportOptions, build_report

    result = _run(build_report, ReportOptions(input=input_path, **options))
    click.echo(f"{display_path(result.output)}: {result.shown} of {result.summary.posts} posts, "
               f"{result.thumbnails} photos", err=True)


@cli.command()
@click.argument("input_path", metavar="INPUT", required=False,
                type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--format", "format_", type=click.Choice(["label-studio", "conll"]), default="label-studio",
              show_default=True, help="label-studio: JSON tasks with pre-annotations; conll: word<TAB>BIO lines.")
@click.option("-o", "--output", default=None, help="File to write, or - for stdout (required with INPUT).")
@click.option("--label-config", is_flag=True,
              help="Print the Label Studio labeling config matching the tasks (uses --model's relation labels).")
@model_option
@click.option("--image-root", type=click.Path(file_okay=False), default=None,
              help="Directory that relative image paths resolve against (default: INPUT's folder).")
@click.option("--image-url-prefix", default=None, metavar="URL",
              help="data.image = URL/<image path relative to the image root>, for images served over HTTP.")
@click.option("--local-files-root", type=click.Path(file_okay=False), default=None,
              help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: data.image = /data/local-files/?d=<path "
                   "below it>.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Read only the first N lines.")
@click.option("--confine-images/--no-confine-images", default=True, show_default=True,
              help="Read only images under the image root (--image-root, else INPUT's folder), symlinks resolved; "
                   "--no-confine-images lets posts name any file (trusted input only).")
@click.option("-F", "--force", is_flag=True, help="Overwrite an existing output file.")
@click.pass_obj
def export(obj: dict, input_path: str | None, format_: str, output: str | None, label_config: bool, model: str,
           **options: Any) -> None:
    """Turn an annotate output into Label Studio tasks with pre-annotations (or CoNLL), or print the labeling config.

    Example: mmib export out.jsonl --format label-studio -o tasks.json; mmib export --label-config > config.xml
    """
    from mmib_cli.workflows import export as exporting

    if label_config:
        relations = _run(exporting.model_relation_labels, model, online=obj.get("online"))
        click.echo(exporting.label_config(relations), nl=False)
        return
    if input_path is None or output is None:
        raise click.UsageError("give INPUT and -o OUTPUT (or --label-config)")
    opts = exporting.ExportOptions(input=input_path, output=output, format=format_, **options)
    result = _run(exporting.export, opts)
    click.echo(f"{display_path(result.output)}: {result.exported} posts exported, {result.left_out} error/skipped "
               "records left out", err=True)


def main() -> None:
    """Console-script entry point.

    SIGINT/SIGTERM end any command quietly with exit code 130/143, start-up (imports, model loading) included; a
    second signal ends the process at once.
    """
    from mmib_cli.signals import Interrupted, install
    from mmib_cli.stdio import guard_standard_streams

    guard_standard_streams()  # `2>&-` and friends: see mmib_cli.stdio
    install()
    try:
        cli(prog_name="mmib")
    except Interrupted as exc:
        logger.warning("interrupted by %s", exc)
        sys.exit(128 + exc.signum)


__all__ = ["cli", "main", "DEFAULT_MODEL", "ExitCode"]
