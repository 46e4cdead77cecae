"""Issue 25, point 7: closed standard streams, odd output names and damaged checkpoints: each its exit code and one
clear line (run as a real process: a closed descriptor cannot be faked in-process)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import invoke, make_posts, subprocess_env, write_jsonl


@pytest.fixture(scope="module")
def posts(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("posts") / "in.jsonl", make_posts(3, seed=1))


def _run(redirect: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m mmib_cli ARGS REDIRECT` through bash, so the redirection (`2>&-`...) is real."""
    script = f'exec "{sys.executable}" -m mmib_cli "$@" {redirect}'
    return subprocess.run(["bash", "-c", script, "mmib", *map(str, args)], cwd=cwd, env=subprocess_env(),
                          capture_output="2>" not in redirect, timeout=300)


def test_a_closed_stderr_does_not_change_the_run(posts, tiny_text_only_ner, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = _run("2>&-", "annotate", posts, "-o", out, "-m", tiny_text_only_ner, "--num-workers", "0", cwd=tmp_path)
    assert proc.returncode == 0
    assert len(out.read_bytes().splitlines()) == 3


def test_a_closed_stdout_with_dash_output_is_one_clear_line(posts, tmp_path):
    proc = _run(">&-", "annotate", posts, "-o", "-", "-m", "mmib-default", cwd=tmp_path)
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1 and lines == ["Error: -o - writes to stdout, but stdout is closed (>&-): give -o FILE"]


def test_a_closed_stdin_with_dash_input_is_one_clear_line(tmp_path):
    proc = _run("<&-", "annotate", "-", "-o", tmp_path / "out.jsonl", "-m", "mmib-default", cwd=tmp_path)
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "stdin is closed" in lines[0], lines
    assert not (tmp_path / "out.jsonl").exists()


def test_report_of_a_closed_stdin_and_export_to_a_closed_stdout(tmp_path):
    src = write_jsonl(tmp_path / "out.jsonl", [{"id": 1, "line": 1, "text": "a", "entities": []}])
    proc = _run("<&-", "report", "-", "-o", tmp_path / "r.html", cwd=tmp_path)
    assert proc.returncode == 1 and b"stdin is closed" in proc.stderr and b"unexpected" not in proc.stderr
    proc = _run(">&-", "export", src, "-o", "-", cwd=tmp_path)
    assert proc.returncode == 1 and b"stdout is closed" in proc.stderr and b"unexpected" not in proc.stderr


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS filesystems refuse names that are not UTF-8")
def test_output_names_that_are_not_utf8(posts, tiny_text_only_ner, tmp_path):
    base = os.fsencode(tmp_path)
    out = base + b"/out\xff.jsonl"
    proc = _run("", "annotate", os.fsdecode(posts), "-o", os.fsdecode(out), "-m", tiny_text_only_ner,
                "--num-workers", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert os.path.exists(out)
    for command, name in (("report", b"/page\xff.html"), ("export", b"/tasks\xff.json")):
        proc = _run("", command, os.fsdecode(out), "-o", os.fsdecode(base + name), cwd=tmp_path)
        assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr
        assert os.path.exists(base + name)
    page = (base + b"/page\xff.html")
    assert b"out\\xff.jsonl" in open(page, "rb").read()  # the title names the input, escaped


def test_an_overlong_output_name_fails_before_the_model_loads(posts, tmp_path):
    out = tmp_path / ("o" * 246 + ".jsonl")
    result = invoke("annotate", posts, "-o", out, "-m", "no-such-model")
    assert result.exit_code == 2 and "too long" in result.stderr and "no-such-model" not in result.stderr
    result = invoke("report", posts, "-o", tmp_path / ("r" * 250 + ".html"))
    assert result.exit_code == 2 and "too long" in result.stderr


@pytest.mark.parametrize("damage, needle", [
    ("encoder-root", "is not a Hugging Face model directory"),
    ("encoder-missing", "does not exist"),
    ("weights-unreadable", "cannot read checkpoint file"),
    ("weights-garbage", "cannot be read as safetensors"),
])
def test_a_damaged_checkpoint_is_one_clear_line(posts, tiny_text_only_ner, tmp_path, damage, needle):
    model = tmp_path / "model"
    shutil.copytree(tiny_text_only_ner, model)
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    if damage == "encoder-root":
        config["text_encoder"] = {"source": "path", "path": "/"}
    elif damage == "encoder-missing":
        config["text_encoder"] = {"source": "path", "path": ""}
    elif damage == "weights-unreadable":
        (model / "model.safetensors").unlink()
        os.mkfifo(model / "weights.fifo")
        (model / "model.safetensors").symlink_to("/proc/self/mem")
    else:
        (model / "model.safetensors").write_bytes(b"\xff" * 64)
    (model / "config.json").write_text(json.dumps(config), encoding="utf-8")
    result = invoke("annotate", posts, "-o", tmp_path / "out.jsonl", "-m", model, "--num-workers", "0")
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and needle in errors[0], result.stderr
    assert "unexpected" not in result.stderr
