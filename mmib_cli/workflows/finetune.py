"""Learn from corrections: fine-tune a checkpoint on a Label Studio export and report before/after scores.

`mmib train ner|re --init CHECKPOINT --train export.json` comes here when a `--train` file is a Label Studio JSON
export. The reviewed posts are split (seeded) into training posts and held-out posts, written in the training
formats to `OUTPUT/corrections/` (`train.txt`, `holdout.txt`: CoNLL for ner, MNRE lines for re), and the usual
training loop continues from the `--init` checkpoint, selecting the epoch on the held-out corrections (or on
`--valid` when nothing is held out). The starting checkpoint and the result are both scored on the held-out
corrections and on every `--valid` file (the benchmark, to catch forgetting); `OUTPUT/finetune.json` keeps the
numbers.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmib_cli.data.labelstudio import (
    ReadStats,
    is_label_studio_export,
    read_label_studio,
    split_holdout,
    to_mnre,
    to_sentence,
)
from mmib_cli.data.writers import write_conll, write_mnre
from mmib_cli.errors import UsageError

logger = logging.getLogger(__name__)

__all__ = ["FinetuneResult", "corrections_files", "finetune", "wants_finetune"]

CORRECTIONS_DIR = "corrections"


@dataclass
class FinetuneResult:
    """The training outcome plus the corrections used and the before/after scores."""

    train: Any  # train.TrainResult
    corrections: dict[str, int]
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """`mmib train`'s JSON: the training summary, the corrections used, F1 before and after per eval set."""
        scores = {name: {"before_f1": s["before"]["f1"], "after_f1": s["after"]["f1"], "examples": s["examples"]}
                  for name, s in self.scores.items()}
        return {**self.train.summary(), "corrections": self.corrections, "scores": scores}


def wants_finetune(train_files: list[str]) -> bool:
    """Whether any `--train` file is a Label Studio export (then `--init` is required)."""
    return any(is_label_studio_export(f) for f in train_files)


def corrections_files(task: str, exports: list[str], out_dir: Path, *, holdout: float, seed: int,
                      use_predictions: bool = False) -> tuple[Path, Path | None, dict[str, int]]:
    """Read the exports, split them, and write `train.txt` (+ `holdout.txt` when posts are held out).

    Returns:
        (training file, held-out file or None, counts: tasks, used posts, held-out posts, examples).

    Raises:
        UsageError: no usable training example is left.
    """
    posts, totals = [], ReadStats()
    for path in exports:
        found, stats = read_label_studio(path, use_predictions=use_predictions)
        posts += found
        totals.tasks += stats.tasks
        totals.unlabelled += stats.unlabelled
        totals.bad_regions += stats.bad_regions
    train_posts, held_posts = split_holdout(posts, holdout, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    write = write_conll if task == "ner" else write_mnre

    def examples(chosen: list) -> list:
        if task == "ner":
            return [to_sentence(p, line=i) for i, p in enumerate(chosen, 1)]
        return [x for i, p in enumerate(chosen, 1) for x in to_mnre(p, line=i)]

    train_file, held_file = out_dir / "train.txt", out_dir / "holdout.txt"
    n_train = write(train_file, examples(train_posts))
    n_held = write(held_file, examples(held_posts)) if held_posts else 0
    if n_train == 0:
        raise UsageError(f"{', '.join(exports)}: no reviewed {task} example to train on "
                         f"({totals.tasks} tasks, {totals.unlabelled} without annotations"
                         f"{'' if use_predictions else '; --use-predictions uses the predictions of those'})")
    counts = {"tasks": totals.tasks, "posts": len(posts), "train_posts": len(train_posts),
              "holdout_posts": len(held_posts), "train_examples": n_train, "holdout_examples": n_held,
              "unlabelled_tasks": totals.unlabelled, "regions_left_out": totals.bad_regions}
    logger.info("corrections: %s", json.dumps(counts))
    return train_file, held_file if n_held else None, counts


def finetune(opts: Any, *, holdout: float = 0.2, use_predictions: bool = False) -> FinetuneResult:
    """Continue training `opts.init` on the Label Studio exports among `opts.train_files`.

    Args:
        opts: `train.TrainOptions` with `init` set; its Label Studio files are the corrections, any other
            `--train` files are trained on as well, `valid_files` are the benchmark.
        holdout: fraction of the reviewed posts held out for evaluation (seeded by `opts.seed`).
        use_predictions: train on the predictions of tasks nobody annotated.

    Raises:
        UsageError: no `--init`, nothing to select the epoch on, or no usable correction.
    """
    from mmib_cli.workflows.evaluate import evaluate_file
    from mmib_cli.workflows.train import train

    if not opts.init:
        raise UsageError("training on a Label Studio export continues a checkpoint: give --init CHECKPOINT "
                         "(e.g. --init mmib-default)")
    exports = [f for f in opts.train_files if is_label_studio_export(f)]
    others = [f for f in opts.train_files if f not in exports]
    out = Path(opts.output)
    train_file, held_file, counts = corrections_files(str(opts.task), exports, out / CORRECTIONS_DIR,
                                                      holdout=holdout, seed=opts.seed,
                                                      use_predictions=use_predictions)
    selection = [str(held_file)] if held_file else list(opts.valid_files)
    if not selection:
        raise UsageError("nothing to select the epoch on: hold out part of the corrections (--holdout) or give "
                         "--valid")
    eval_sets = {"holdout": held_file} if held_file else {}
    eval_sets.update({f"valid:{f}": Path(f) for f in opts.valid_files})

    def score(model: str) -> dict[str, dict[str, Any]]:
        return {name: evaluate_file(opts.task, model=model, data=path, images=opts.images, device=opts.device)
                for name, path in eval_sets.items()}

    before = score(opts.init)
    result = train(replace(opts, train_files=others + [str(train_file)], valid_files=selection))
    after = score(str(out))
    scores = {name: {"before": before[name], "after": after[name], "examples": before[name]["examples"]}
              for name in eval_sets}
    for name, s in scores.items():
        logger.info("%s: F1 %.2f before, %.2f after", name, s["before"]["f1"], s["after"]["f1"])
    from mmib_cli.storage.format import atomic_write

    atomic_write(out / "finetune.json", json.dumps({"init": opts.init, "corrections": counts, "scores": scores},
                                                   indent=2, default=str) + "\n")
    return FinetuneResult(result, counts, scores)
