"""Helpers shared by the command tests: run `mmib` in-process, write and read JSONL, make posts."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from click.testing import CliRunner, Result

from mmib_cli.cli import cli

NETWORK_VARS = ("MMIB_OFFLINE", "HF_HUB_OFFLINE")


def invoke(*args, input: str | bytes | None = None, env: dict | None = None, expect: int | None = None) -> Result:
    """Run `mmib ARGS` in-process, the one way every test runs the command line.

    Unexpected exceptions propagate (``catch_exceptions=False``), so a traceback fails the test. The network flags
    the command publishes to os.environ are restored afterwards (CliRunner's ``env``); ``env`` sets more variables
    for the run (``None`` unsets one). With ``expect``, the exit code is asserted, showing stdout and stderr.
    """
    isolated = {name: os.environ.get(name) for name in NETWORK_VARS}
    isolated.update(env or {})
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input, env=isolated, catch_exceptions=False)
    if expect is not None:
        assert result.exit_code == expect, (f"exit {result.exit_code}, expected {expect}\n"
                                            f"stdout: {result.stdout}\nstderr: {result.stderr}")
    return result


def write_jsonl(path: Path, rows) -> Path:
    """Write rows (dicts as JSON, strings verbatim) one per line."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def parse_jsonl(data: str | bytes) -> list[dict]:
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    assert text == "" or text.endswith("\n"), "output must end with a complete line"
    return [json.loads(line) for line in text.splitlines()]


def read_out(path: Path, check) -> list[dict]:
    return check(parse_jsonl(Path(path).read_bytes()))


VOCAB = ("Kawhi Leonard joins the Clippers in Los Angeles Obama visits Berlin with NASA and Apple tonight #NBA "
         "@warriors great game 🚀 Chelsea beat Arsenal at Stamford Bridge").split()


def make_posts(n: int, seed: int = 0) -> list[dict]:
    """n posts of 1..20 words (deterministic), some without id."""
    import random

    rng = random.Random(seed)
    posts = []
    for i in range(n):
        post = {"id": f"p{i:04d}", "text": " ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 20)))}
        if i % 7 == 3:
            del post["id"]
        posts.append(post)
    return posts


UNICODE_TEXT = ("Obama 👋🏾 visits Berlin 👨\u200d👩\u200d👧 مرحبا بالعالم \u200fשלום\u200e zero\u200bwidth "
                "cafe\u0301 नमस्ते 🇺🇸 𝕏 end")


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with one torch thread, then restore the previous count (tiny models run fastest so)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


REPO = Path(__file__).resolve().parents[1]


def subprocess_env() -> dict[str, str]:
    """Environment for running `python -m mmib_cli` in a child process: this checkout, offline, one thread."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("MMIB_OFFLINE", None)
    return env
