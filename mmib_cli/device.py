"""Device and dtype resolution: the only module that inspects the hardware."""
from __future__ import annotations

import torch

from mmib_cli.choices import DEFAULT_DEVICE, DType
from mmib_cli.errors import UsageError

_TORCH_DTYPES = {DType.FLOAT32: torch.float32, DType.FLOAT16: torch.float16, DType.BFLOAT16: torch.bfloat16}


def resolve_device(spec: str = DEFAULT_DEVICE) -> torch.device:
    """Turn `auto|cpu|cuda|cuda:N|mps` into a torch device; `auto` prefers CUDA, then MPS, then CPU.

    Raises:
        UsageError: the device is unknown or not available on this machine.
    """
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {spec!r} requested but CUDA is not available (try --device cpu)")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return device
    if spec == "mps":
        if not _mps_available():
            raise UsageError("device 'mps' requested but MPS is not available (try --device cpu)")
        return torch.device("mps")
    raise UsageError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps")


def resolve_dtype(spec: str | DType, device: torch.device) -> torch.dtype:
    """`auto` is float16 on CUDA (bfloat16 where supported) and float32 elsewhere.

    Raises:
        ValueError: `spec` is not a `DType` value.
    """
    dtype = DType.parse(spec or DType.AUTO, what="dtype")
    if dtype is DType.AUTO:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return torch_dtype(dtype)


def torch_dtype(spec: str | DType | torch.dtype) -> torch.dtype:
    """A concrete floating dtype: a torch dtype as it is, or a `DType` value other than `auto`.

    Raises:
        ValueError: `spec` names no concrete dtype (or is `auto`, which needs a device: use `resolve_dtype`).
    """
    if isinstance(spec, torch.dtype):
        if not spec.is_floating_point:
            raise ValueError(f"dtype must be a floating torch dtype (e.g. torch.float16), got {spec!r}")
        return spec
    dtype = DType.parse(spec, what="dtype")
    if dtype is DType.AUTO:
        raise ValueError("dtype 'auto' depends on the device: resolve it with resolve_dtype(spec, device)")
    return _TORCH_DTYPES[dtype]


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def describe_hardware() -> dict[str, object]:
    """Facts for `mmib info`: CUDA/MPS availability, device names, thread count."""
    info: dict[str, object] = {
        "cuda_available": torch.cuda.is_available(),
        "mps_available": _mps_available(),
        "torch_threads": torch.get_num_threads(),
        "auto_device": str(resolve_device("auto")),
    }
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info
