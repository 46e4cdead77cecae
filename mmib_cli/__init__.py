"""mmib: multimodal named-entity and relation annotation of social-media posts with MMIB."""
from __future__ import annotations

from mmib_cli._version import __version__

__all__ = ["Annotator", "MMIBConfig", "MMIBModel", "__version__"]


def __getattr__(name: str):  # lazy: keep `import mmib_cli` and `mmib --help` free of torch
    if name == "Annotator":
        from mmib_cli.annotation.annotator import Annotator

        return Annotator
    if name in ("MMIBConfig", "MMIBModel"):
        from mmib_cli import model

        return getattr(model, name)
    raise AttributeError(f"module 'mmib_cli' has no attribute {name!r}")
