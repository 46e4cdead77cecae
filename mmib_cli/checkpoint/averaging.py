"""Weight averaging of checkpoints fine-tuned from one start (a "model soup": Wortsman et al., ICML 2022;
WiSE-FT: Wortsman et al., CVPR 2022): the mean of every stored tensor, one model's cost at inference."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mmib_cli.storage.format import _write_json, load_state, save_state
from mmib_cli.errors import InvalidCheckpoint

VERSION_KEYS = frozenset({"mmib_version"})  # which package version wrote the file: may differ between the parts


def average_checkpoints(directories: Sequence[str | Path], output: str | Path, *,
                        dtype: str | None = "float16") -> Path:
    """Write the checkpoint whose every tensor is the mean of the same tensor in `directories`.

    The checkpoints must share one architecture and one configuration (they are continuations of one model, e.g.
    the model a run started from and the run's result); the output keeps that configuration and records its parts
    in `training_args.json` (`average_of`).

    Args:
        directories: two or more single-task checkpoint directories.
        output: the checkpoint directory to write.
        dtype: floating dtype of the stored tensors (the mean is computed in float32); None keeps float32.

    Returns:
        `output` as a Path.

    Raises:
        ValueError: fewer than two checkpoints.
        InvalidCheckpoint: a checkpoint is unreadable, or their configurations, tensor names, shapes or integer
            tensors differ.
    """
    if len(directories) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(directories)}")
    first_config, total = load_state(directories[0])
    total = {name: tensor.clone() for name, tensor in total.items()}
    first_settings = _settings(directories[0], first_config)
    for directory in directories[1:]:
        config, state = load_state(directory)
        settings = _settings(directory, config)
        differing = sorted(k for k in set(settings) | set(first_settings) if settings.get(k) != first_settings.get(k))
        if differing:
            raise InvalidCheckpoint(f"{directory} and {directories[0]} differ in config.json ({', '.join(differing)}): "
                                    "only continuations of one model can be averaged")
        if state.keys() != total.keys():
            missing = sorted(set(state) ^ set(total))[:5]
            raise InvalidCheckpoint(f"{directory} and {directories[0]} store different tensors ({', '.join(missing)})")
        for name, tensor in state.items():
            if tensor.shape != total[name].shape or (not tensor.is_floating_point() and
                                                      not bool((tensor == total[name]).all())):
                raise InvalidCheckpoint(f"{directory}: tensor {name} differs in shape or integer value from "
                                        f"{directories[0]}")
            if tensor.is_floating_point():
                total[name] += tensor
    count = float(len(directories))
    mean = {name: tensor / count if tensor.is_floating_point() else tensor for name, tensor in total.items()}
    output = Path(output)
    save_state(output, first_config, mean, dtype=dtype)
    parts = [str(Path(d).resolve()) for d in directories]
    _write_json(output / "training_args.json", {"average_of": parts})
    _write_json(output / "metrics.json", {"best_epoch": None, "valid": None, "average_of": parts})
    return output


def _settings(directory: str | Path, config: dict) -> dict:
    """A checkpoint's configuration with the defaults filled in (a key an older version did not write equals its
    default) and without the version of the package that wrote it."""
    from mmib_cli.checkpoint.assemble import CHECKPOINT_KEYS, load_config

    checkpoint = {k: v for k, v in config.items() if k in CHECKPOINT_KEYS and k not in VERSION_KEYS}
    return {**checkpoint, **load_config(directory).to_dict()}
