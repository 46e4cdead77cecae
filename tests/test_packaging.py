"""Packaging: what `pip install .` installs is the whole package (tests run from the tree cannot see a missing one)."""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mmib_cli"
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def _subpackages() -> set[str]:
    found = set()
    for init in PACKAGE.rglob("__init__.py"):
        if "__pycache__" in init.parts:
            continue
        found.add(".".join(init.parent.relative_to(ROOT).parts))
    return found


def test_every_subpackage_is_installed():
    declared = set(_setuptools()["packages"])
    assert _subpackages() - declared == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert "mmib_cli._models" in declared


def _package_of(path: Path, packages: set[str]) -> tuple[str, str]:
    """The innermost declared package holding `path`, and the path relative to that package's directory."""
    parts = path.relative_to(ROOT).parts
    for depth in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:depth])
        if name in packages:
            return name, "/".join(parts[depth:])
    raise AssertionError(f"{path} is in no declared package")


def test_every_data_file_of_the_package_is_installed():
    config = _setuptools()
    packages = set(config["packages"])
    package_data: dict[str, list[str]] = config["package-data"]
    missing = []
    for path in PACKAGE.rglob("*"):
        if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        package, relative = _package_of(path, packages)
        patterns = package_data.get(package, [])
        if not any(fnmatch.fnmatch(relative, pattern) for pattern in patterns):
            missing.append(f"{package}: {relative}")
    assert missing == [], "add these to [tool.setuptools.package-data] in pyproject.toml"


def test_embedded_checkpoint_files_are_installed():
    config = _setuptools()
    assert config["package-dir"]["mmib_cli._models"] == "models"
    patterns = config["package-data"]["mmib_cli._models"]
    models = ROOT / "models"
    for path in models.rglob("*"):
        if path.is_file():
            relative = str(path.relative_to(models))
            assert any(fnmatch.fnmatch(relative, p) or re.fullmatch(p.replace("**/", "(.*/)?").replace("*", "[^/]*"),
                                                                    relative) for p in patterns), relative
