"""The `mmib` command group: help and README coverage, version, info, usage errors, the README quick start."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import invoke
from mmib_cli import __version__
from mmib_cli.cli import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


@pytest.fixture()
def keep_hub_flag(monkeypatch):
    """`--online/--offline` also flip huggingface_hub's frozen constant: restore it after the test."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)


COMMANDS = sorted(cli.commands)


def test_the_group_has_the_documented_commands():
    assert {"annotate", "relations", "download", "models", "info", "train", "eval"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_an_example_and_is_in_the_readme(name):
    command = cli.commands[name]
    assert command.help and command.help.strip().splitlines()[0].endswith(".")
    assert f"mmib {name}" in README or f"`{name}`" in README
    result = invoke(name, "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: ")
    assert "Example" in result.stdout
    for param in command.params:  # every option is documented
        if isinstance(param, __import__("click").Option) and not param.hidden:
            assert param.help or param.name in {"help"}, f"{name} {param.opts} has no help"


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag):
    result = invoke(flag)
    assert result.exit_code == 0
    assert result.stdout.strip() == f"mmib, version {__version__}"


def test_group_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.stdout


def test_python_dash_m_help_works_without_importing_torch():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "mmib_cli", "--help"], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: mmib") or proc.stdout.startswith("Usage: python -m mmib_cli")
    assert "annotate" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "mmib_cli.cli" in imported
    assert not imported & {"torch", "transformers", "huggingface_hub"}, "--help must stay instant"


def test_info_json_reports_truthfully(monkeypatch):
    import torch

    from mmib_cli.storage.registry import models_dir

    result = invoke("info", "--json", env={"MMIB_OFFLINE": None, "HF_HUB_OFFLINE": None})
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["mmib"] == __version__
    assert facts["torch"] == torch.__version__
    assert facts["hardware"]["cuda_available"] == torch.cuda.is_available()
    assert facts["offline"] is True  # offline by default
    default = facts["embedded"]["mmib-default"]
    assert Path(default["path"]) == models_dir() / "mmib-default"
    has_files = any(p.is_file() for p in Path(default["path"]).rglob("*")) if Path(default["path"]).is_dir() else False
    assert default["present"] == has_files


def test_info_online_flag_is_reported(keep_hub_flag):
    result = invoke("--online", "info", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["offline"] is False
    result = invoke("info", "--json", env={"MMIB_OFFLINE": "0"})
    assert json.loads(result.stdout)["offline"] is False


def test_info_text():
    result = invoke("info")
    assert result.exit_code == 0 and "mmib " + __version__ in result.stdout


def test_models_lists_the_default():
    result = invoke("models")
    assert result.exit_code == 0 and "mmib-default" in result.stdout


def _default_checkpoint_present() -> bool:
    from mmib_cli.storage.registry import models_dir

    directory = models_dir() / "mmib-default"
    return directory.is_dir() and any(p.is_file() for p in directory.rglob("*"))


@pytest.mark.slow
def test_readme_quick_start_on_the_samples(tmp_path, monkeypatch):
    """`mmib annotate samples/posts.jsonl -o out.jsonl`, run from the repository root."""
    assert "mmib annotate samples/posts.jsonl -o out.jsonl" in README
    monkeypatch.chdir(REPO)
    out = tmp_path / "out.jsonl"
    assert _default_checkpoint_present()  # the default checkpoint ships inside the package
    result = invoke("annotate", "samples/posts.jsonl", "-o", out)
    assert result.exit_code == 0, result.output  # every sample post is annotated (the broken image falls back)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 14 and all("error" not in r for r in records)
    assert [r["line"] for r in records] == list(range(1, 15))


@pytest.mark.parametrize("args,needle", [
    (["--resume", "--force"], "--resume"),
    (["--resume", "-o", "-"], "--resume"),
    (["--on-missing-image", "bogus"], "--on-missing-image"),
    (["--batch-size", "0"], "--batch-size"),
    (["--dtype", "float8"], "--dtype"),
    (["--limit", "0"], "--limit"),
])
def test_usage_errors_exit_2(args, needle, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "x"}\n')
    if "-o" not in args:
        args = [*args, "-o", str(tmp_path / "out.jsonl")]
    result = invoke("annotate", src, *args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_unknown_command_exits_2():
    result = invoke("frobnicate")
    assert result.exit_code == 2


def test_output_is_required():
    result = invoke("annotate", "x.jsonl")
    assert result.exit_code == 2 and "--output" in result.stderr


@pytest.fixture()
def small_input(tmp_path) -> Path:
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "text": "Obama visits Berlin"}\n', encoding="utf-8")
    return src


@pytest.mark.parametrize("value", ["0/3", "4/3", "x", "1/0"])
def test_bad_shard_is_a_usage_error(value, small_input, tmp_path):
    result = invoke("annotate", small_input, "-o", tmp_path / "o.jsonl", "--shard", value)
    assert result.exit_code == 2
    assert "--shard" in result.stderr


def test_unknown_model_is_fatal_with_a_clear_message(small_input, tmp_path):
    out = tmp_path / "out.jsonl"
    result = invoke("annotate", small_input, "-o", out, "-m", "no-such-model-xyz")
    assert result.exit_code == 1
    [message] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "no-such-model-xyz" in message
    assert "Traceback" not in result.output
    assert not out.exists() and not (tmp_path / "out.jsonl.partial").exists()


def test_missing_input_is_a_usage_error(tmp_path):
    result = invoke("annotate", tmp_path / "nope.jsonl", "-o", tmp_path / "out.jsonl")
    assert result.exit_code == 2 and "nope.jsonl" in result.stderr


def test_directory_input_says_it_is_a_directory(tmp_path):
    result = invoke("annotate", tmp_path, "-o", tmp_path / "out.jsonl", expect=2)
    assert f"input {tmp_path} is a directory" in result.stderr


def test_named_pipe_input_is_accepted(tmp_path, tiny_text_only_ner):
    """A FIFO (what `<(zcat a.gz)` gives as /dev/fd/N) is read once, by one reader, even with worker processes."""
    import gzip
    import threading

    fifo = tmp_path / "posts.fifo"
    os.mkfifo(fifo)
    data = gzip.compress(b'{"id": "a", "text": "Obama visits Berlin"}\n\n{"id": "b", "text": "Kawhi Leonard"}\n')
    writer = threading.Thread(target=fifo.write_bytes, args=(data,), daemon=True)
    writer.start()
    result = invoke("annotate", fifo, "-o", "-", "-m", tiny_text_only_ner, "--num-workers", "2", expect=0)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["id"], r["line"]) for r in records] == [("a", 1), (2, 2), ("b", 3)]
    assert records[1]["skipped"] == {"reason": "blank line"}
    writer.join(timeout=60)


def test_a_clean_clone_stays_clean():
    """`pip install .` (build/, *.egg-info/) and the quick start (out.jsonl) write only ignored files."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert not [path for path in tracked.splitlines() if ".egg-info/" in path or path.startswith("build/")]
    products = ["build/lib/mmib_cli/cli.py", "mmib.egg-info/PKG-INFO", "out.jsonl", "out.jsonl.partial",
                "mmib_cli/__pycache__/cli.cpython-311.pyc"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *products], cwd=REPO, capture_output=True,
                             text=True).stdout.split()
    assert ignored == products


@pytest.mark.parametrize("name", ["annotate", "relations"])
def test_run_help_groups_its_options_and_ends_with_input_format_and_exit_codes(name):
    from mmib_cli.options import RUN_SECTIONS

    text = invoke(name, "--help", expect=0).stdout
    headings = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings[:3] == ["Input and output", "Model", "Relations"], headings
    assert headings.index("Performance") < headings.index("Engine (Ray)")
    options = [p for p in cli.commands[name].params if isinstance(p, __import__("click").Option)]
    for option in (o for o in options if not o.hidden):  # every shown option exactly once
        assert sum(line.lstrip().startswith(tuple(option.opts)) for line in text.splitlines()) == 1, option.opts
    grouped = {n for _, names in RUN_SECTIONS for n in names}
    assert {o.name for o in options} - grouped <= {"help"}
    assert "--engine" in text.split("Engine (Ray):")[1] and "--engine" not in text.split("Engine (Ray):")[0]
    tail = text.split("Exit codes:")[1]
    for code in ("0 ", "1 ", "2 ", "3 ", "130/143", "141"):
        assert f"\n    {code}" in tail
    assert "jq -c '.[]'" in text.split("Input:")[-1]
    assert all(len(line) <= 100 for line in text.splitlines())


def _torchvision_mismatch(monkeypatch):
    """Simulate a torchvision built for another torch: its operators are missing, as after a half upgrade."""
    import torchvision.ops

    from mmib_cli import stack

    def nms(*args, **kwargs):
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(torchvision.ops, "nms", nms)
    versions = {"torch": "2.14.1", "torchvision": "0.27.0"}
    monkeypatch.setattr(stack, "installed_version", lambda name: versions.get(name, "1.0"))


def test_info_checks_the_stack_runs_and_names_cause_and_fix(monkeypatch):
    facts = json.loads(invoke("info", "--json", expect=0).stdout)
    assert [c["name"] for c in facts["stack"]] == ["torch", "torchvision", "transformers", "files"]
    assert all(c["ok"] for c in facts["stack"]) and "BertModel forward" in facts["stack"][2]["detail"]
    _torchvision_mismatch(monkeypatch)
    result = invoke("info", expect=1)
    assert "stack: torchvision BROKEN" in result.stdout
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "torch 2.14.1 and torchvision 0.27.0 do not match" in error and "operator torchvision::nms" in error
    assert 'pip install --force-reinstall "torch==2.14.1" "torchvision==0.29.*"' in error


def test_annotate_reports_an_import_failure_as_a_broken_install(monkeypatch, tmp_path):
    from mmib_cli.annotation.annotator import Annotator

    _torchvision_mismatch(monkeypatch)

    def from_pretrained(*args, **kwargs):
        try:
            raise RuntimeError("operator torchvision::nms does not exist")
        except RuntimeError as exc:
            raise ModuleNotFoundError("Could not import module 'BertModel'. Are this object's requirements "
                                      "defined correctly?") from exc

    monkeypatch.setattr(Annotator, "from_pretrained", from_pretrained)
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "Obama visits Berlin"}\n')
    result = invoke("annotate", src, "-o", tmp_path / "out.jsonl", expect=1)
    assert "unexpected" not in result.stderr
    assert "installed stack is broken: torch 2.14.1 and torchvision 0.27.0 do not match" in result.stderr
    assert "pip install --force-reinstall" in result.stderr
