"""Closed choices are enums that feed the click options and validate library calls; defaults are declared once."""
from __future__ import annotations

import subprocess
import sys

import click
import pytest

from mmib_cli import choices
from mmib_cli.choices import Command, DType, Engine, Mode, ModelTask, OnMissingImage
from mmib_cli.cli import cli


@pytest.mark.parametrize("enum", [OnMissingImage, Mode, Command, Engine, DType, ModelTask])
def test_parse_accepts_members_and_values_and_names_the_allowed_values(enum):
    for member in enum:
        assert enum.parse(member) is member
        assert enum.parse(member.value) is member
        assert enum.parse(member.value.upper()) is member
        assert str(member) == member.value == f"{member}"
    with pytest.raises(ValueError) as info:
        enum.parse("skpi", what="the option")
    assert "the option must be one of " + ", ".join(enum.values()) in str(info.value)
    assert "'skpi'" in str(info.value)


def _param(command: str, name: str) -> click.Parameter:
    return next(p for p in cli.commands[command].params if p.name == name)


@pytest.mark.parametrize("command,name,enum", [
    ("annotate", "on_missing_image", OnMissingImage), ("relations", "on_missing_image", OnMissingImage),
    ("annotate", "engine", Engine), ("annotate", "dtype", DType), ("eval", "dtype", DType),
    ("train", "dtype", DType), ("train", "task", ModelTask), ("eval", "task", ModelTask),
])
def test_click_choices_come_from_the_enums(command, name, enum):
    assert list(_param(command, name).type.choices) == enum.values()


@pytest.mark.parametrize("command,name,default", [
    ("annotate", "model", choices.DEFAULT_MODEL), ("eval", "model", choices.DEFAULT_MODEL),
    ("annotate", "batch_size", choices.DEFAULT_BATCH_SIZE), ("eval", "batch_size", choices.DEFAULT_BATCH_SIZE),
    ("train", "batch_size", choices.DEFAULT_TRAIN_BATCH_SIZE), ("annotate", "max_tokens", choices.DEFAULT_MAX_TOKENS),
    ("annotate", "device", choices.DEFAULT_DEVICE), ("annotate", "on_missing_image", OnMissingImage.TEXT_ONLY),
    ("annotate", "engine", Engine.LOCAL),
])
def test_click_defaults_are_the_declared_constants(command, name, default):
    assert _param(command, name).default == default


def test_library_typos_raise_instead_of_falling_back():
    from mmib_cli.annotation.annotator import PrepareSettings
    from mmib_cli.device import resolve_dtype
    from mmib_cli.runs import RunOptions as PipelineOptions

    with pytest.raises(ValueError, match="on_missing_image must be one of text-only, error, skip, got 'skpi'"):
        PrepareSettings(on_missing_image="skpi")
    assert PrepareSettings(on_missing_image="skip").on_missing_image is OnMissingImage.SKIP
    with pytest.raises(ValueError, match="dtype must be one of auto, float32"):
        resolve_dtype("float64", __import__("torch").device("cpu"))
    with pytest.raises(ValueError, match="task must be one of annotate, relations"):
        PipelineOptions(task="anotate", input_path="x", output="y")
    opts = PipelineOptions(task="relations", input_path="x", output="y", on_missing_image="error")
    assert opts.mode is Mode.RELATIONS and opts.on_missing_image is OnMissingImage.ERROR


def test_annotator_process_rejects_an_unknown_mode(tiny_bundle):
    from mmib_cli import Annotator

    annotator = Annotator.from_pretrained(str(tiny_bundle), device="cpu")
    with pytest.raises(ValueError, match="mode must be one of annotate, annotate\\+relations, relations"):
        annotator.process([], "relation")


def test_choices_import_without_torch():
    code = "import sys, mmib_cli.choices, mmib_cli._version; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
