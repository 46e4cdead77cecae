"""Evaluation: entity-level P/R/F1 for NER (seqeval, CoNLL convention) and micro P/R/F1 without None for RE."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

from mmib_cli.choices import DEFAULT_DEVICE, DType, ModelTask
from mmib_cli.console import Progress
from mmib_cli.data.datasets import Examples, read_examples, try_load_image
from mmib_cli.errors import UsageError
from mmib_cli.annotation.forward import predict_ner, predict_re

logger = logging.getLogger(__name__)


EVAL_CHUNK_POSTS = 128  # posts whose decoded images are held in memory at once (and the progress step)


def score_examples(loaded: Any, examples: Examples, *, chunk_posts: int = EVAL_CHUNK_POSTS,
                   description: str = "scoring") -> dict[str, Any]:
    """Predict every example with `loaded` and score against the gold labels.

    Posts are predicted `chunk_posts` at a time, so only that many decoded images are in memory at once (and the
    progress, shown as `description`, moves once per chunk); the predictions do not depend on it: every window runs
    in a call of a fixed shape (`annotation.forward`), as in `mmib annotate`.
    """
    from mmib_cli.workflows.metrics import ner_scores, re_scores

    labels = loaded.model.config.labels
    predicted: list[Any] = []
    images_used = 0
    unit = "posts" if examples.task == "ner" else "pairs"
    with Progress(description, total=len(examples.windows_per_post), unit=unit) as progress:
        for start in range(0, len(examples.windows_per_post), max(1, chunk_posts)):
            posts = examples.windows_per_post[start: start + chunk_posts]
            photos = [try_load_image(path, loaded.image_info)
                      for path in examples.image_paths[start: start + chunk_posts]]
            images_used += sum(photo is not None for photo in photos)
            if examples.task == "ner":
                preds = predict_ner(loaded, posts, photos=photos)
                predicted.extend(p.tags for p in preds)
            else:
                probs = predict_re(loaded, [windows[0] for windows in posts], photos=photos)
                predicted.extend(labels[i] for i in probs.argmax(dim=-1).tolist())
            progress.advance(len(posts))
    metrics = ner_scores(examples.gold, predicted) if examples.task == "ner" else re_scores(examples.gold, predicted)
    metrics["images_used"] = images_used
    metrics["examples"] = len(examples.gold)
    return metrics


def evaluate_file(task: ModelTask | str, *, model: str, data: str | Path, images: str | Path | None = None,
                  device: str = DEFAULT_DEVICE, dtype: DType | str = DType.AUTO,
                  online: bool | None = None) -> dict[str, Any]:
    """Load a checkpoint (any `--model` form) and score it on a CoNLL (ner) or MNRE (re) file."""
    task = ModelTask.parse(task, what="task")
    from mmib_cli.checkpoint.bundle import load_bundle

    if images is not None and not Path(images).is_dir():  # a typo would silently score text-only
        raise UsageError(f"--images {images}: no such directory")
    logger.info("loading %s", model)
    loaded = load_bundle(model, device=device, dtype=dtype, online=online).require(task)
    examples = read_examples(task, [data], loaded.featurizer, loaded.model.config.labels, images=images)
    logger.info("scoring %s on %d examples of %s", model, len(examples.gold), data)
    metrics = score_examples(loaded, examples, description=f"mmib eval {task}")
    metrics.update(task=task, model=model, data=str(data))
    return metrics


def write_metrics(metrics: dict[str, Any], path: str | Path) -> None:
    """Write the metrics as indented JSON (through a new temporary file renamed into place; a symlinked
    `--output-json` is followed to its target, as `-o` is)."""
    from mmib_cli.io.safefile import output_target, write_atomic

    target = output_target(path)
    write_atomic(target, (json.dumps(metrics, indent=2) + "\n").encode("utf-8"),
                 temporary=target.with_name(target.name + ".partial"))


def render_metrics(metrics: dict[str, Any]) -> str:
    """A table of the metrics (micro P/R/F1, then one row per type) as plain text."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{metrics.get('task', '').upper()} {metrics.get('data', '')}")
    for column in ("", "P", "R", "F1", "support"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row("micro", *(f"{metrics[k]:.2f}" for k in ("precision", "recall", "f1")),
                  str(metrics.get("support", "")))
    for name, row in sorted(metrics.get("per_type", {}).items()):
        table.add_row(name, f"{row['precision']:.2f}", f"{row['recall']:.2f}", f"{row['f1']:.2f}",
                      str(row.get("support", "")))
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(table)
    if "accuracy" in metrics:
        console.print(f"accuracy {metrics['accuracy']:.2f}")
    return console.file.getvalue().rstrip("\n")
