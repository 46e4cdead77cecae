"""Is the installed stack (torch, torchvision, transformers, safetensors, Pillow) really usable? (torch-free import)

A torch/torchvision mismatch or a half-upgraded transformers shows up deep inside model loading as an error that
looks like a bug in mmib (`ModuleNotFoundError: Could not import module 'BertModel'`). `check_stack` imports each
part and runs a tiny piece of it (a torchvision operator, a two-layer BERT forward), and `explain_import_error`
turns such a failure into its root cause plus the command that fixes it; `mmib info` reports the former and the
command line uses the latter for any import error (`BrokenInstall`, exit 1).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

from mmib_cli.errors import BrokenInstall

__all__ = ["StackCheck", "broken_install", "check_stack", "explain_import_error", "installed_version",
           "is_broken_install"]

REINSTALL = 'pip install --force-reinstall "mmib"'


@dataclass
class StackCheck:
    """One check of `check_stack`: what was tried, and when it failed, why and the fix."""

    name: str
    ok: bool
    detail: str = ""
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, read from its metadata (nothing is imported), or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _base(version: str | None) -> str | None:
    return None if version is None else version.split("+", 1)[0]


def _torchvision_for(torch_version: str | None) -> str | None:
    """The torchvision release line built for a torch release (torch 2.N pairs with torchvision 0.(N+15))."""
    match = re.match(r"2\.(\d+)", torch_version or "")
    return f"0.{int(match.group(1)) + 15}" if match else None


def _root(exc: BaseException) -> BaseException:
    """The innermost cause of an exception (`raise ... from`, or raised while handling another)."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def explain_import_error(exc: BaseException) -> tuple[str, str]:
    """(cause, fix) of a failure to import or run part of the stack."""
    root = _root(exc)
    text = f"{type(root).__name__}: {root}"
    torch_version = installed_version("torch")
    vision_version = installed_version("torchvision")
    wanted = _torchvision_for(torch_version)
    mismatch = wanted is not None and vision_version is not None and not _base(vision_version).startswith(wanted + ".")
    if "torchvision" in text or mismatch:
        if mismatch:
            cause = (f"torch {torch_version} and torchvision {vision_version} do not match (torch "
                     f"{_base(torch_version)} needs torchvision {wanted}.x): {text}")
        else:
            cause = f"torchvision {vision_version} does not work with torch {torch_version}: {text}"
        index = (" --index-url https://download.pytorch.org/whl/cpu" if "+cpu" in (torch_version or "") else "")
        fix = (f'install the matching pair: pip install --force-reinstall "torch=={_base(torch_version)}" '
               f'"torchvision=={wanted}.*"{index}' if wanted else
               'reinstall both from the same index: pip install --force-reinstall torch torchvision')
        return cause, fix
    for part in ("transformers", "safetensors", "huggingface_hub", "tokenizers", "PIL", "numpy", "torch"):
        if isinstance(root, ImportError) and part in text:
            package = "pillow" if part == "PIL" else part
            return (f"{package} {installed_version(package) or '(not installed)'} does not import: {text}",
                    f'reinstall it with the versions mmib needs: pip install --force-reinstall "{package}" '
                    f'"mmib" (then check with `mmib info`)')
    return f"the installed packages do not work together: {text}", f"{REINSTALL} (then check with `mmib info`)"


_BROKEN_STACK = re.compile(r"operator \S+ does not exist|cannot open shared object file|undefined symbol|"
                           r"Could not import module")


def is_broken_install(exc: BaseException) -> bool:
    """Whether an unexpected exception is the stack failing to import or load (not a bug in mmib)."""
    return isinstance(exc, ImportError) or (isinstance(exc, (RuntimeError, OSError))
                                            and bool(_BROKEN_STACK.search(str(exc))))


def broken_install(exc: BaseException) -> BrokenInstall:
    """The `BrokenInstall` error for an import failure: its root cause and the fix, in one message."""
    cause, fix = explain_import_error(exc)
    return BrokenInstall(f"the installed stack is broken: {cause}; fix: {fix}")


def _torch() -> str:
    import torch

    value = (torch.ones(2, 3) @ torch.ones(3, 2)).sum().item()
    if value != 12.0:
        raise RuntimeError(f"torch computes 1-matrices' product sum as {value}, not 12")
    return f"torch {torch.__version__}: a matrix product"


def _torchvision() -> str:
    import torch
    import torchvision
    from torchvision.ops import nms
    from torchvision.transforms.v2 import functional as TF

    kept = nms(torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.1]]), torch.tensor([0.9, 0.8]), 0.5)
    TF.resize(torch.zeros(3, 8, 8), [4, 4], antialias=True)
    if kept.tolist() != [0]:
        raise RuntimeError(f"torchvision.ops.nms kept {kept.tolist()}, not [0]")
    return f"torchvision {torchvision.__version__}: nms and resize operators"


def _transformers() -> str:
    import torch
    import transformers
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16)
    with torch.no_grad():
        hidden = BertModel(config).eval()(input_ids=torch.tensor([[1, 2, 3]])).last_hidden_state
    if tuple(hidden.shape) != (1, 3, 8) or not torch.isfinite(hidden).all():
        raise RuntimeError(f"a tiny BertModel forward gave {tuple(hidden.shape)} / non-finite values")
    return f"transformers {transformers.__version__}: a tiny BertModel forward"


def _files() -> str:
    import PIL
    import safetensors

    return f"safetensors {safetensors.__version__}, Pillow {PIL.__version__}: import"


CHECKS: tuple[tuple[str, Callable[[], str]], ...] = (
    ("torch", _torch), ("torchvision", _torchvision), ("transformers", _transformers), ("files", _files))
"""What `check_stack` runs, in order (a later part needs the earlier ones)."""


def check_stack() -> list[StackCheck]:
    """Import each part of the stack and run a tiny piece of it (a few seconds: transformers' import dominates)."""
    results = []
    for name, check in CHECKS:
        try:
            results.append(StackCheck(name, True, check()))
        except Exception as exc:  # noqa: BLE001 - any failure here is the finding, reported with its fix
            cause, fix = explain_import_error(exc)
            results.append(StackCheck(name, False, cause, fix))
    return results
