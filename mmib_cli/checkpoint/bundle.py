"""Load what `--model` names for annotation or evaluation: one typed `LoadedBundle` with its NER and RE models.

`--model` may name a single-task checkpoint or a bundle (`bundle.json` with `ner/` and `re/` parts); either way the
caller gets the same result, whose `ner`/`re` fields are None for a task the checkpoint lacks.
"""
from __future__ import annotations

from dataclasses import dataclass

from mmib_cli.checkpoint.assemble import LoadedModel, load_model
from mmib_cli.choices import DEFAULT_DEVICE, DType, ModelTask
from mmib_cli.errors import InvalidCheckpoint
from mmib_cli.storage.model_info import ModelInfo


@dataclass
class LoadedBundle:
    """The task models of one resolved `--model`, ready for inference.

    Attributes:
        label: `name@revision` written into every output record.
        ner: the entity model, or None.
        re: the relation model, or None.
    """

    label: str
    ner: LoadedModel | None = None
    re: LoadedModel | None = None

    def get(self, task: ModelTask | str) -> LoadedModel | None:
        """The model of a task (`ner` or `re`), or None when the checkpoint has none."""
        return self.ner if ModelTask.parse(task, what="task") is ModelTask.NER else self.re

    def require(self, task: ModelTask | str) -> LoadedModel:
        """The model of a task.

        Raises:
            InvalidCheckpoint: the checkpoint has no model for that task.
        """
        loaded = self.get(task)
        if loaded is None:
            raise InvalidCheckpoint(f"checkpoint {self.label} has no {task} model")
        return loaded


def load_bundle(model: str | ModelInfo, *, revision: str | None = None, device: str = DEFAULT_DEVICE,
                dtype: str | DType = DType.AUTO, cache_dir: str | None = None, token: str | None = None,
                online: bool | None = None) -> LoadedBundle:
    """Resolve `model` (directory, registry name or hub id; a `ModelInfo` is already resolved) and load its task
    models for inference.

    Raises:
        MMIBError: the checkpoint cannot be resolved, verified or loaded (see `resolve_model`, `load_model`).
        InvalidCheckpoint: a bundle holds two models of the same task.
        ValueError: an unknown device or dtype.
    """
    from mmib_cli.storage.resolve import resolve_model
    from mmib_cli.storage.format import read_bundle
    from mmib_cli.device import resolve_device, resolve_dtype
    from mmib_cli.checkpoint.optimize import optimize_for_inference

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if isinstance(model, ModelInfo) and model.parts:
        label, paths = model.label, [path for _, path in model.parts]
    else:
        resolved = resolve_model(str(model), revision=revision, cache_dir=cache_dir, token=token, online=online)
        label, paths = resolved.label, list((read_bundle(resolved.path) or {"single": resolved.path}).values())
    bundle = LoadedBundle(label=label)
    for path in paths:
        loaded = load_model(path, device=torch_device, dtype=torch_dtype)
        optimize_for_inference(loaded)
        task = ModelTask.parse(loaded.model.config.task, what="task")
        if bundle.get(task) is not None:
            raise InvalidCheckpoint(f"checkpoint {label} holds two {task} models")
        setattr(bundle, task.value, loaded)
    return bundle
