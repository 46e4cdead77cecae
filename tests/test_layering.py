"""The import graph points down only (issue 28): each part of mmib_cli imports only from its own layer or below.

Lazy imports inside functions count too: a layer may not reach up even to save start-up time.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mmib_cli"

LAYERS = [
    # 0 base: torch-free values and utilities every part may use
    {"_version", "choices", "errors", "text", "settings", "offline", "signals", "console", "device", "stdio",
     "stack"},
    # 1 formats and pure computation: records and files, the torch model, featurisation
    {"io", "model", "features"},
    # 2 where checkpoints come from and how they lie on disk
    {"storage"},
    # 3 model assembly; training and evaluation data
    {"checkpoint", "data"},
    # 4 the library's post flow (Annotator)
    {"annotation"},
    # 5 what a run is (torch-free plan), then the engines that run it and the file workflows
    {"runs"},
    {"engines", "workflows"},
    # 7 the command line and the package's public face
    {"cli", "options", "__main__", "__init__", "_models", "templates"},
]
LAYER_OF = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def _part(module: str) -> str:
    """`mmib_cli.annotation.flow` -> `annotation`."""
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmib_cli"):
            if node.module == "mmib_cli":
                found += [(node.lineno, f"mmib_cli.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("mmib_cli.")]
    return found


def test_every_module_is_in_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())) and p.name != "__pycache__"}
    assert parts - set(LAYER_OF) == set()


def test_imports_point_down_only():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = "mmib_cli." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        own = LAYER_OF[_part(module.removesuffix(".__init__"))]
        for line, target in _imports(path):
            if target in ("mmib_cli.Annotator", "mmib_cli.__version__"):
                target = "mmib_cli.__init__"
            if LAYER_OF.get(_part(target), 0) > own:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert upward == []
