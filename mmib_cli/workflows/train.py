"""Training: seeded AdamW + linear warm-up loop, valid-split model selection, early stopping, resumable."""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmib_cli.checkpoint.assemble import LoadedModel, build_model, load_model, save_model
from mmib_cli.storage.format import atomic_write
from mmib_cli.choices import DEFAULT_DEVICE, DEFAULT_TRAIN_BATCH_SIZE, DType, ModelTask
from mmib_cli.console import Progress
from mmib_cli.data.datasets import Examples, WindowDataset, make_collate, read_examples
from mmib_cli.device import resolve_device, resolve_dtype
from mmib_cli.checkpoint.encoders import build_image_backbone, parse_image_encoder, parse_text_encoder, text_encoder_location
from mmib_cli.errors import UsageError
from mmib_cli.workflows.evaluate import score_examples
from mmib_cli.features import Featurizer
from mmib_cli.model.tuning import copy_into_wider_lora, lora_rank

logger = logging.getLogger(__name__)

LAST_DIR = "last"  # OUTPUT/last/: the latest epoch's model and trainer state, for --resume
LOSS_KEYS = ("loss", "task_loss", "kl_text", "kl_image", "ar_loss")
INIT_OVERRIDES = frozenset({"hashtag_words", "max_length", "stride"})  # featurisation only: no tensor changes


@dataclass
class TrainOptions:
    """Everything `mmib train` takes (see its --help); `config` holds MMIBConfig overrides."""

    task: ModelTask
    train_files: list[str]
    valid_files: list[str]
    output: str
    images: str | None = None
    text_encoder: str = "minilm-l6"
    image_encoder: str = "efficientnet-lite0"
    config: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = DEFAULT_TRAIN_BATCH_SIZE
    lr: float = 5e-5
    head_lr: float = 1e-3
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    grad_accum: int = 1
    patience: int = 3
    seed: int = 0
    max_train: int | None = None
    resume: bool = False
    init: str | None = None  # checkpoint to continue training from (its task part, its architecture)
    select_init: bool = True  # --init: the starting checkpoint is epoch 0 of the selection
    reverse_pairs: bool = False  # RE: add reversed pairs (asymmetric → None, symmetric → same label)
    reverse_pairs_weight: float = 1.0  # RE: loss weight of the reversed pairs that become None
    lowercase_copies: bool = False  # NER: add a lowercased copy of every training sentence
    mention_swaps: bool = False  # NER: add a copy of every training sentence with its mentions swapped
    num_workers: int = 0
    device: str = DEFAULT_DEVICE
    dtype: DType = DType.AUTO
    save_dtype: str = "float16"

    def __post_init__(self) -> None:
        self.task = ModelTask.parse(self.task, what="task")
        self.dtype = DType.parse(self.dtype, what="dtype")
        if self.reverse_pairs and self.task is not ModelTask.RE:
            raise UsageError("--reverse-pairs is for relation (re) training")
        if self.reverse_pairs_weight != 1.0 and not self.reverse_pairs:
            raise UsageError("--reverse-pairs-weight weighs the pairs --reverse-pairs adds: give --reverse-pairs")
        if self.lowercase_copies and self.task is not ModelTask.NER:
            raise UsageError("--lowercase-copies is for entity (ner) training")
        if self.mention_swaps and self.task is not ModelTask.NER:
            raise UsageError("--mention-swaps is for entity (ner) training")

    @classmethod
    def from_cli(cls, *, config_overrides: tuple[str, ...] = (), **options: Any) -> "TrainOptions":
        overrides: dict[str, Any] = {}
        for item in config_overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise UsageError(f"--config expects KEY=VALUE, got {item!r}")
            try:
                overrides[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                overrides[key.strip()] = value
        options["train_files"] = list(options["train_files"])
        options["valid_files"] = list(options["valid_files"])
        _check_outputs(options["output"], options["train_files"] + options["valid_files"])
        return cls(config=overrides, **options)


OUTPUT_FILES = ("config.json", "model.safetensors", "README.md", "training_args.json", "metrics.json",
                "finetune.json", "corrections/train.txt", "corrections/holdout.txt", f"{LAST_DIR}/config.json",
                f"{LAST_DIR}/model.safetensors", f"{LAST_DIR}/trainer_state.pt", f"{LAST_DIR}/trainer_state.json")
"""The files `mmib train -o OUTPUT` writes (or replaces) inside OUTPUT."""


def _check_outputs(output: str | Path, inputs: list[str]) -> None:
    """Refuse `-o OUTPUT` when a data file is one of the files training writes there (`io.safefile`).

    Raises:
        UsageError: an input is one of `OUTPUT_FILES`, or OUTPUT is a file.
    """
    from mmib_cli.io.safefile import output_target, refuse_same_file

    out = output_target(output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {output} is a file: training writes a checkpoint directory")
    refuse_same_file(inputs, [out / name for name in OUTPUT_FILES])


@dataclass
class TrainResult:
    """Outcome of a run: the best valid metrics, the epoch they came from, and where the checkpoint is."""

    output: Path
    best_epoch: int
    best_valid: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {"output": str(self.output), "best_epoch": self.best_epoch,
                "best_valid_f1": self.best_valid.get("f1"), "seconds": round(self.seconds, 1),
                "epochs_run": sum(record["epoch"] > 0 for record in self.history)}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


def make_config(opts: TrainOptions, *, images_found: bool):
    """MMIBConfig for a new run: task defaults, encoder specs and sizes, then the user's overrides."""
    from transformers import AutoConfig

    from mmib_cli.model import MMIBConfig

    text_spec = parse_text_encoder(opts.text_encoder)
    image_spec = parse_image_encoder(opts.image_encoder)
    location, kwargs = text_encoder_location(text_spec)
    hidden = AutoConfig.from_pretrained(location, **kwargs).hidden_size
    _, info = build_image_backbone(image_spec) if image_spec["source"] != "none" else (None, None)
    values: dict[str, Any] = dict(task=opts.task, hidden_size=hidden,
                                  image_feature_dim=info.feature_dim if info else 1,
                                  use_image=info is not None, trained_with_images=bool(images_found and info),
                                  text_encoder=text_spec, image_encoder=image_spec, hashtag_words=True)
    values.update(opts.config)
    try:
        return MMIBConfig(**values)
    except (TypeError, ValueError) as exc:  # an unknown key or an impossible value given with --config
        raise UsageError(f"--config {' '.join(f'{k}={v}' for k, v in opts.config.items())}: {exc}") from exc


def _optimizer(model: torch.nn.Module, opts: TrainOptions) -> torch.optim.Optimizer:
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_encoder = name.startswith("text_encoder.")
        no_decay = name.endswith("bias") or "LayerNorm" in name or "norm" in name.lower()
        groups.setdefault((is_encoder, no_decay), []).append(param)
    return torch.optim.AdamW([
        {"params": params, "lr": opts.lr if enc else opts.head_lr,
         "weight_decay": 0.0 if no_decay else opts.weight_decay}
        for (enc, no_decay), params in groups.items()
    ])


def train(opts: TrainOptions) -> TrainResult:
    """Train one task; the best epoch on the valid split is saved to `opts.output` (never selected on test)."""
    start = time.perf_counter()
    out = Path(opts.output)
    seed_everything(opts.seed)
    device = resolve_device(opts.device)
    resuming = opts.resume and (out / LAST_DIR / "config.json").is_file()
    loaded = _starting_model(opts, resuming)
    train_set, valid_set = _read_splits(opts, loaded)
    if not resuming and loaded.model.config.trained_with_images and train_set.images_found == 0:
        # no training post has its picture there: the image path would stay untrained, so never use it
        logger.warning("no training image found in %s: training text-only", opts.images)
        loaded.model.config.trained_with_images = False
    loader = _train_loader(opts, loaded, train_set)
    loaded.model.to(device)
    optimizer = _optimizer(loaded.model, opts)
    scheduler = _scheduler(optimizer, opts, len(loader))
    state = _initial_state(out, optimizer, scheduler) if resuming else _fresh_state()
    precision = _AutocastPlan.for_run(opts.dtype, device)
    if opts.init and opts.select_init and not resuming:
        _score_start(loaded, valid_set, state, out, opts, time.perf_counter() - start)
    for epoch in range(state["epoch"] + 1, opts.epochs + 1):
        seed_everything(opts.seed + epoch)
        loader.generator.manual_seed(opts.seed + epoch)
        totals = _train_epoch(loaded.model, loader, optimizer, scheduler, precision, opts, epoch, device)
        loaded.model.eval()
        metrics = score_examples(loaded, valid_set, description=f"epoch {epoch}/{opts.epochs} valid")
        _record_epoch(state, epoch, totals, len(loader), metrics, time.perf_counter() - start)
        if state["best_epoch"] == epoch:
            _save(loaded, out, opts)
        _write_metrics(out, state)
        _save_last(loaded, out / LAST_DIR, optimizer, scheduler, state)
        if state["bad_epochs"] >= opts.patience:
            logger.info("early stop: no valid improvement for %d epochs", opts.patience)
            break
    if opts.init and opts.select_init and state["best_epoch"] == 0:
        logger.warning("no epoch beat the starting model on the valid split (F1 %.2f): %s holds the starting "
                       "model; the last epoch is in %s", state["best_f1"], out, out / LAST_DIR)
    return TrainResult(out, state["best_epoch"], state.get("best_valid") or {}, state["history"],
                       time.perf_counter() - start)


def _score_start(loaded: LoadedModel, valid_set: Examples, state: dict[str, Any], out: Path, opts: TrainOptions,
                 seconds: float) -> None:
    """`--init`: score the starting model on the valid split as epoch 0 and save it as the output.

    An epoch then replaces it only with a higher valid F1, so continuing a checkpoint (on Label Studio corrections,
    say) never leaves a model that selects worse than the one it started from.
    """
    loaded.model.eval()
    metrics = score_examples(loaded, valid_set, description="epoch 0 valid")
    record = {"epoch": 0, **_valid_fields(metrics), "seconds": round(seconds, 1)}
    state["history"].append(record)
    state.update(best_f1=metrics["f1"], best_epoch=0, best_valid=metrics)
    logger.info("epoch 0 (the starting model): %s", json.dumps(record))
    _save(loaded, out, opts)
    _write_metrics(out, state)


def _starting_model(opts: TrainOptions, resuming: bool) -> LoadedModel:
    """The model training starts from: OUTPUT/last/ (--resume), an --init checkpoint, or a freshly built one."""
    if resuming:
        loaded = load_model(Path(opts.output) / LAST_DIR, device="cpu", for_inference=False)
    elif opts.init:
        loaded = load_init_model(opts.init, opts.task, opts.config)
        logger.info("starting from %s (%s)", opts.init, loaded.directory)
    else:
        image_spec = parse_image_encoder(opts.image_encoder)
        if opts.images and not Path(opts.images).is_dir():
            raise UsageError(f"--images {opts.images}: no such directory")
        images_found = bool(opts.images and any(Path(opts.images).iterdir()))
        config = make_config(opts, images_found=images_found and image_spec["source"] != "none")
        loaded = build_model(config, load_image_backbone=config.trained_with_images)
    loaded.model.train()
    return loaded


def load_init_model(spec: str, task: str, overrides: dict[str, Any] | None = None) -> LoadedModel:
    """Load the `task` part of a checkpoint to continue training from it (`mmib train --init`).

    Args:
        spec: a checkpoint directory, a bundle directory, a registry name (`mmib-default`) or a hub id.
        task: "ner" or "re": which part of a bundle to take; a single-task checkpoint must be of this task.
        overrides: `--config` values; only the featurisation settings `INIT_OVERRIDES` may change, the rest of
            the architecture is the checkpoint's.

    Returns:
        The model with its trainable parameters (adapters, heads, MMIB layers) as stored, ready for training.

    Raises:
        UsageError: the checkpoint has no `task` part, is a checkpoint of the other task, or an override
            touches the architecture.
    """
    from mmib_cli.storage.resolve import resolve_model
    from mmib_cli.storage.format import read_bundle, read_config

    directory = resolve_model(spec).path
    bundle = read_bundle(directory)
    if bundle is not None:
        if task not in bundle:
            raise UsageError(f"--init {spec}: the bundle has no {task} part (it has {', '.join(sorted(bundle))})")
        directory = bundle[task]
    found = read_config(directory).get("task")
    if found != task:
        raise UsageError(f"--init {spec}: {directory} is a {found} checkpoint, not {task}")
    overrides = dict(overrides or {})
    tuning = overrides.pop("encoder_tuning", None)
    fixed = sorted(set(overrides) - INIT_OVERRIDES)
    if fixed:
        raise UsageError(f"--config {', '.join(fixed)}: a model started with --init keeps its checkpoint's "
                         f"architecture; only {', '.join(sorted(INIT_OVERRIDES))} may change (and "
                         "encoder_tuning may widen LoRA adapters)")
    loaded = load_model(directory, device="cpu", for_inference=False)
    if tuning is not None and tuning != loaded.model.config.encoder_tuning:
        loaded = _widen_lora(loaded, tuning)
    if overrides:
        config = type(loaded.model.config).from_dict({**loaded.model.config.to_dict(), **overrides})  # validated
        loaded.model.config = config
        loaded.featurizer = Featurizer.from_config(loaded.featurizer.tokenizer, config)
    return loaded


def _widen_lora(loaded: LoadedModel, tuning: str) -> LoadedModel:
    """The loaded model with wider LoRA adapters (`--init ... --config encoder_tuning=lora:R`), computing the same
    function at the start (`tuning.copy_into_wider_lora`)."""
    old = loaded.model.config.encoder_tuning
    old_rank, new_rank = lora_rank(old), lora_rank(str(tuning))
    if old_rank is None or new_rank is None or new_rank < old_rank:
        raise UsageError(f"--config encoder_tuning={tuning}: a model started with --init keeps its encoder tuning "
                         f"({old}) or widens its LoRA adapters (lora:R with R >= {old_rank or '...'})")
    config = type(loaded.model.config).from_dict({**loaded.model.config.to_dict(), "encoder_tuning": tuning})
    wider = build_model(config, load_image_backbone=True)
    copy_into_wider_lora(loaded.model, wider.model)
    logger.info("LoRA adapters widened from %s to %s", old, tuning)
    wider.directory = loaded.directory
    return wider


def _read_splits(opts: TrainOptions, loaded: LoadedModel) -> tuple[Examples, Examples]:
    """Featurised train and valid examples (train: with the RE pair or NER copies when asked)."""
    labels = loaded.model.config.labels
    train_set = read_examples(opts.task, opts.train_files, loaded.featurizer, labels, images=opts.images,
                              limit=opts.max_train, reverse_pairs=opts.reverse_pairs,
                              reverse_pairs_weight=opts.reverse_pairs_weight,
                              lowercase_copies=opts.lowercase_copies, mention_swaps=opts.mention_swaps,
                              seed=opts.seed)
    valid_set = read_examples(opts.task, opts.valid_files, loaded.featurizer, labels, images=opts.images)
    logger.info("train: %d windows from %d posts; valid: %d posts; images in train: %d", len(train_set.windows),
                len(train_set.gold), len(valid_set.gold), train_set.images_found)
    return train_set, valid_set


def _train_loader(opts: TrainOptions, loaded: LoadedModel, train_set: Examples) -> DataLoader:
    """Shuffled training batches; the loader's generator is reseeded every epoch."""
    image_info = loaded.image_info if loaded.model.config.trained_with_images else None
    return DataLoader(WindowDataset(train_set, image_info), batch_size=opts.batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(opts.seed), num_workers=opts.num_workers,
                      collate_fn=make_collate(loaded.featurizer, opts.task,
                                              image_info.image_size if image_info else None))


def _scheduler(optimizer: torch.optim.Optimizer, opts: TrainOptions, batches: int):
    """Linear warm-up over `warmup_ratio` of the optimizer steps, then linear decay to 0."""
    from transformers import get_linear_schedule_with_warmup

    steps = max(1, opts.epochs * batches // opts.grad_accum)
    return get_linear_schedule_with_warmup(optimizer, int(opts.warmup_ratio * steps), steps)


def _fresh_state() -> dict[str, Any]:
    return {"epoch": 0, "best_f1": -1.0, "best_epoch": 0, "history": [], "bad_epochs": 0}


def _initial_state(out: Path, optimizer, scheduler) -> dict[str, Any]:
    """Trainer state of an interrupted run in OUTPUT/last/; restores the optimizer and scheduler in place."""
    last_dir = out / LAST_DIR
    saved = torch.load(last_dir / "trainer_state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    state = _fresh_state()
    state.update(json.loads((last_dir / "trainer_state.json").read_text()))
    if "best_valid" not in state and (out / "metrics.json").is_file():  # trainer state of an older mmib
        state["best_valid"] = json.loads((out / "metrics.json").read_text()).get("valid")
    logger.info("resuming after epoch %d (best valid F1 %.2f)", state["epoch"], state["best_f1"])
    return state


@dataclass(frozen=True)
class _AutocastPlan:
    """Mixed precision of the forward pass (`--dtype`): autocast dtype, or None for float32."""

    device_type: str
    dtype: torch.dtype | None

    @classmethod
    def for_run(cls, spec: str | DType, device: torch.device) -> "_AutocastPlan":
        """`auto`: half precision on CUDA, float32 elsewhere; float16/bfloat16 autocast on any device."""
        dtype = resolve_dtype(spec, device)
        return cls(device.type, None if dtype == torch.float32 else dtype)

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, needed for float16 on CUDA only."""
        return torch.amp.GradScaler("cuda", enabled=self.device_type == "cuda" and self.dtype == torch.float16)


def _train_epoch(model, loader: DataLoader, optimizer, scheduler, precision: _AutocastPlan, opts: TrainOptions,
                 epoch: int, device: torch.device) -> dict[str, float]:
    """One pass over the training batches; returns the summed losses."""
    model.train()
    scaler = precision.scaler()
    totals = dict.fromkeys(LOSS_KEYS, 0.0)
    with Progress(f"epoch {epoch}/{opts.epochs}", total=len(loader), unit="batches") as progress:
        for step, batch in enumerate(loader, 1):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with precision.autocast():
                output = model(**batch)
            scaler.scale(output.loss / opts.grad_accum).backward()
            if step % opts.grad_accum == 0 or step == len(loader):
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            for key in totals:
                value = getattr(output, key)
                totals[key] += float(value.detach()) if value is not None else 0.0
            progress.advance()
    return totals


def _valid_fields(metrics: dict[str, Any]) -> dict[str, float]:
    """The valid-split scores an epoch's history record keeps."""
    return {"valid_f1": metrics["f1"], "valid_precision": metrics["precision"], "valid_recall": metrics["recall"]}


def _record_epoch(state: dict[str, Any], epoch: int, totals: dict[str, float], batches: int,
                  metrics: dict[str, Any], seconds: float) -> None:
    """Append the epoch to the history and update best/bad-epoch counters (best = higher valid F1)."""
    record = {"epoch": epoch, **{k: round(v / max(1, batches), 5) for k, v in totals.items()},
              **_valid_fields(metrics), "seconds": round(seconds, 1)}
    state["history"].append(record)
    logger.info("epoch %d: %s", epoch, json.dumps(record))
    if metrics["f1"] > state["best_f1"]:
        state.update(best_f1=metrics["f1"], best_epoch=epoch, bad_epochs=0, best_valid=metrics)
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch


def _save(loaded: LoadedModel, out: Path, opts: TrainOptions) -> None:
    dtype = torch.float16 if opts.save_dtype == "float16" else None
    save_model(loaded, out, dtype=dtype)
    atomic_write(out / "training_args.json", json.dumps(asdict(opts), indent=2, default=str) + "\n")


def _write_metrics(out: Path, state: dict) -> None:
    """metrics.json: the best epoch's valid metrics (the saved checkpoint's) and the history of every epoch."""
    if not (out / "config.json").is_file():  # nothing saved yet
        return
    atomic_write(out / "metrics.json", json.dumps({"best_epoch": state["best_epoch"], "valid": state.get("best_valid"),
                                                   "history": state["history"]}, indent=2) + "\n")


def _save_last(loaded: LoadedModel, last_dir: Path, optimizer, scheduler, state: dict) -> None:
    save_model(loaded, last_dir)
    trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    atomic_write(last_dir / "trainer_state.pt", lambda handle: torch.save(trainer, handle))
    atomic_write(last_dir / "trainer_state.json", json.dumps(state) + "\n")
