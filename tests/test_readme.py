"""Every command of the README's fenced blocks runs as written (issue 26, point 3).

The shell commands of the ```bash blocks (and the ```python blocks, as scripts) run in order, in a fresh directory
holding a copy of `samples/` (the layout of a clone), as a newcomer would type them after the quick start. A block
that needs what a test cannot have (the network, a cluster, the data sets, a Label Studio export) is marked in the
README by an HTML comment on the line before it: `<!-- readme-test: skip (REASON) -->`. A `pip install` step is
skipped (the test runs in the installed environment, without network). Each command must exit 0 and leave the files
it names with `-o FILE` or `> FILE`.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SKIP_MARK = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
FENCE = re.compile(r"^```(?P<lang>[a-z]*)\s*$")


@dataclass
class Block:
    """A fenced block of the README: its language, commands, first line number and skip reason (None: runs)."""

    lang: str
    commands: list[str]
    line: int
    skip: str | None


def readme_blocks(text: str) -> list[Block]:
    """The ```bash and ```python blocks of a Markdown text, bash split into commands (continuations joined)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match or not match.group("lang"):
            index += 1
            continue
        start, body = index, []
        index += 1
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        index += 1
        lang = match.group("lang")
        if lang not in ("bash", "sh", "shell", "python"):
            continue
        previous = next((line for line in reversed(lines[:start]) if line.strip()), "")
        mark = SKIP_MARK.search(previous)
        if lang == "python":
            commands = ["\n".join(body)]
        else:
            commands = []
            for line in re.sub(r"\s*\\\n\s*", " ", "\n".join(body)).splitlines():
                command = re.sub(r"(^|\s)#.*$", "", line).strip()  # drop comments
                if command:
                    commands.append(command)
        blocks.append(Block(lang, commands, start + 1, mark.group("reason") if mark else None))
    return blocks


def _steps(command: str) -> list[str]:
    """A command line's `&&` steps, less `pip install` steps (the environment is installed; no network)."""
    return [step.strip() for step in command.split("&&") if not step.strip().startswith(("pip ", "python -m pip"))]


def _produced(step: str) -> list[str]:
    """The files a step says it writes: `-o FILE` / `--output FILE` (not `-`) and `> FILE`."""
    words = shlex.split(step)
    files = [words[i + 1] for i, word in enumerate(words[:-1]) if word in ("-o", "--output", ">")]
    return [name for name in files if name != "-"]


def test_readme_blocks_are_found_and_every_skip_has_a_reason():
    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    runnable = [b for b in blocks if b.skip is None]
    assert len(blocks) >= 8 and len(runnable) >= 4
    commands = [step for b in runnable if b.lang != "python" for c in b.commands for step in _steps(c)]
    assert "mmib annotate samples/posts.jsonl -o out.jsonl" in commands  # the quick start runs
    assert all(len(b.skip.split()) >= 3 for b in blocks if b.skip)


def test_block_parser_joins_continuations_and_reads_marks():
    text = ("<!-- readme-test: skip (needs a cluster) -->\n```bash\nray start --head  # head\n```\n\n"
            "```bash\nmmib annotate a.jsonl \\\n     -o b.jsonl\n# a comment\n```\n")
    first, second = readme_blocks(text)
    assert first.skip == "needs a cluster" and first.commands == ["ray start --head"]
    assert second.skip is None and second.commands == ["mmib annotate a.jsonl -o b.jsonl"]
    assert _produced("mmib export --label-config > config.xml") == ["config.xml"]
    assert _steps("pip install . && mmib annotate x -o y") == ["mmib annotate x -o y"]


def _default_model_present() -> bool:
    from mmib_cli.storage.registry import models_dir

    directory = models_dir() / "mmib-default"
    return directory.is_dir() and any(p.is_file() for p in directory.rglob("*"))


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path):
    if not _default_model_present():
        pytest.skip("the embedded default checkpoint is not in this checkout")
    work = tmp_path / "clone"
    shutil.copytree(REPO / "samples", work / "samples")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mmib").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m mmib_cli \"$@\"\n")
    (bin_dir / "mmib").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    env.pop("MMIB_OFFLINE", None)
    ran = 0
    for block in readme_blocks(README.read_text(encoding="utf-8")):
        if block.skip is not None:
            continue
        for command in block.commands:
            if block.lang == "python":
                argv, steps = [sys.executable, "-c", command], [command]
            else:
                steps = _steps(command)
                if not steps:
                    continue
                argv = ["bash", "-c", "set -e -o pipefail\n" + "\n".join(steps)]
            proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            where = f"README.md line {block.line}: {command!r}"
            assert proc.returncode == 0, f"{where} exited {proc.returncode}\n{proc.stderr[-3000:]}"
            for step in steps if block.lang != "python" else []:
                for name in _produced(step):
                    assert (work / name).exists(), f"{where} did not write {name}"
            assert "Traceback" not in proc.stderr, where
            ran += 1
    assert ran >= 6
    # what the review commands say they produce is what a reviewer needs: photos in the page, images in the tasks
    import json

    page = (work / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/jpeg;base64,") >= 1
    tasks = json.loads((work / "tasks.json").read_text(encoding="utf-8"))
    with_image = [t for t in tasks if t["data"]["image"]]
    assert with_image and all(t["data"]["image"].startswith("/data/local-files/?d=") for t in with_image)
