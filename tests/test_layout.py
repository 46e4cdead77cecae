"""Import structure: loading lives in checkpoint/, no module reaches back into the package root or the Annotator."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmib_cli"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
    return out


def test_no_module_imports_the_version_through_the_package_root():
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"
                 for module, names in _imports(p) if module == "mmib_cli" and "__version__" in names]
    assert offenders == []


@pytest.mark.parametrize("module", ["mmib_cli.workflows.evaluate", "mmib_cli.workflows.train", "mmib_cli.checkpoint.bundle"])
def test_evaluation_training_and_loading_do_not_import_the_annotator(module):
    code = f"import sys, {module}; assert 'mmib_cli.annotation.annotator' not in sys.modules, 'annotate imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_model_package_holds_encoder_tuning_and_checkpoint_io_does_not():
    assemble = [name for module, names in _imports(PACKAGE / "checkpoint" / "assemble.py") for name in names]
    assert "apply_encoder_tuning" in assemble  # used from mmib_cli.model.tuning, not defined here
    source = (PACKAGE / "checkpoint" / "assemble.py").read_text(encoding="utf-8")
    assert "def apply_encoder_tuning" not in source and "peft" not in source
