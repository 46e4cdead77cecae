"""A newcomer's first hour (issue 26): wrong input formats, misspelt models and missing folders are usage errors
found before torch is imported, model files are hashed once per run, and the messages say what to do."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import invoke, write_jsonl
from mmib_cli.errors import UsageError
from mmib_cli.io.sniff import sniff_input

REPO = Path(__file__).resolve().parents[1]
POSTS = [{"id": f"p{i}", "content": f"Obama visits Berlin number {i}", "image": None} for i in range(5)]


def _as_array(path: Path, indent: int | None = None) -> Path:
    path.write_text(json.dumps(POSTS, indent=indent), encoding="utf-8")
    return path


def _as_table(path: Path, delimiter: str) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text", "image"], delimiter=delimiter)
        writer.writeheader()
        for post in POSTS:
            writer.writerow({"id": post["id"], "text": post["content"], "image": ""})
    return path


@pytest.mark.parametrize("maker, needles", [
    (lambda p: _as_array(p / "posts.json"), ["JSON array", "jq -c '.[]'", "posts.jsonl"]),
    (lambda p: _as_array(p / "posts.json", indent=2), ["JSON array", "jq -c '.[]'"]),
    (lambda p: (p / "doc.json").write_text(json.dumps({"posts": POSTS}, indent=2)) and p / "doc.json",
     ["several lines", "jq -c ."]),
    (lambda p: _as_table(p / "posts.csv", ","), ["looks like CSV", "columns: id, text, image", "csv.DictReader"]),
    (lambda p: _as_table(p / "posts.tsv", "\t"), ["looks like TSV", "delimiter=chr(9)"]),
    (lambda p: write_jsonl(p / "posts.txt", [post["content"] for post in POSTS]),
     ["not JSONL", "jq -R -c '{\"text\": .}'"]),
    (lambda p: write_jsonl(p / "posts.jsonl", POSTS), ["no 'text' field", "'content'", "--text-field content"]),
])
def test_wrong_input_format_is_a_usage_error_that_says_what_to_do(tmp_path, maker, needles):
    source = maker(tmp_path)
    with pytest.raises(UsageError) as caught:
        sniff_input(str(source))
    for needle in needles:
        assert needle in str(caught.value)
    result = invoke("annotate", source, "-o", tmp_path / "out.jsonl", expect=2)
    assert needles[0] in result.stderr and not (tmp_path / "out.jsonl").exists()


def test_the_suggested_conversions_give_jsonl_that_passes(tmp_path):
    table = _as_table(tmp_path / "posts.tsv", "\t")
    with pytest.raises(UsageError) as caught:
        sniff_input(str(table))
    command = str(caught.value).split("convert it first: ", 1)[1]
    subprocess.run(command.replace("python3 ", f"{sys.executable} ", 1), shell=True, check=True, cwd=tmp_path)
    sniff_input(str(tmp_path / "posts.jsonl"))  # accepted as it stands


def test_a_likely_text_field_is_accepted_and_odd_lines_stay_error_records(tmp_path):
    posts = write_jsonl(tmp_path / "posts.jsonl", POSTS)
    sniff_input(str(posts), text_field="content")
    mixed = write_jsonl(tmp_path / "mixed.jsonl", ["{not json", "[1, 2]", {"id": 1}, {"text": "ok"}, ""])
    sniff_input(str(mixed))  # a good JSONL file with some bad lines: those become error records, as before
    sniff_input(str(write_jsonl(tmp_path / "one.jsonl", ["{not json"])))  # one bad line: an error record
    (tmp_path / "empty.jsonl").write_text("")
    sniff_input(str(tmp_path / "empty.jsonl"))


def test_a_compressed_array_is_recognised(tmp_path):
    import gzip

    path = tmp_path / "posts.json.gz"
    path.write_bytes(gzip.compress(json.dumps(POSTS).encode()))
    with pytest.raises(UsageError, match="JSON array"):
        sniff_input(str(path))


def _run_cli(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    code = ("import sys\nfrom mmib_cli.cli import main\nsys.argv = ['mmib'] + sys.argv[1:]\ntry:\n    main()\n"
            "finally:\n    sys.stderr.write('MODULES ' + ' '.join(sorted(sys.modules)) + '\\n')\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)
    modules = set(proc.stderr.rsplit("MODULES ", 1)[-1].split())
    return proc, modules


@pytest.mark.parametrize("case, code, needle", [
    ("exists", 2, "already exists: pass --force"),
    ("no-folder", 1, "mkdir -p"),
    ("misspelt-model", 1, "did you mean 'mmib-default'?"),
    ("json-array", 2, "jq -c '.[]'"),
])
def test_usage_errors_come_before_torch_is_imported(tmp_path, case, code, needle):
    posts = write_jsonl(tmp_path / "posts.jsonl", [{"id": 1, "text": "Obama visits Berlin"}])
    (tmp_path / "out.jsonl").write_text("")
    args = {"exists": [str(posts), "-o", "out.jsonl"],
            "no-folder": [str(posts), "-o", "missing/out.jsonl"],
            "misspelt-model": [str(posts), "-o", "new.jsonl", "-m", "mmib-defualt"],
            "json-array": [str(_as_array(tmp_path / "a.json")), "-o", "new.jsonl"]}[case]
    proc, modules = _run_cli(["annotate", *args], tmp_path)
    assert proc.returncode == code, proc.stderr
    assert needle in proc.stderr
    assert "torch" not in modules and "transformers" not in modules


def test_each_model_file_is_hashed_once_per_process(tmp_path, monkeypatch):
    import hashlib

    from mmib_cli.storage import verify

    big = tmp_path / "weights.bin"
    big.write_bytes(os.urandom(verify.MEMO_MIN_BYTES + 1))
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(verify.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    first = verify.sha256_file(big)
    assert verify.sha256_file(big) == first and len(calls) == 1
    big.write_bytes(os.urandom(verify.MEMO_MIN_BYTES + 1))  # rewritten: hashed again
    assert verify.sha256_file(big) != first and len(calls) == 2


def test_a_run_hashes_each_model_file_once(tmp_path, monkeypatch):
    from collections import Counter

    from mmib_cli.storage import verify
    from mmib_cli.storage.resolve import resolve_model
    from mmib_cli.runs import RunOptions
    from mmib_cli.runs.preflight import preflight
    from mmib_cli.runs.provenance import describe_model

    monkeypatch.setattr(verify, "_memo", {})
    opened: Counter[str] = Counter()

    def counting_open(path, *args, **kwargs):
        if os.path.getsize(path) >= verify.MEMO_MIN_BYTES:
            opened[str(path)] += 1
        return open(path, *args, **kwargs)

    monkeypatch.setattr(verify, "open", counting_open, raising=False)
    posts = write_jsonl(tmp_path / "posts.jsonl", [{"id": 1, "text": "Obama visits Berlin"}])
    opts = RunOptions.from_cli(task="annotate", input_path=str(posts), output=str(tmp_path / "o.jsonl"))
    preflight(opts)  # resolves (verifies) and describes (digests) the model
    describe_model(opts.model)  # the engine describes it again
    resolve_model(opts.model)  # and loading resolves it again
    assert opened and set(opened.values()) == {1}, opened


def test_setting_up_logging_does_not_import_transformers():
    code = ("import sys\nfrom mmib_cli.console import setup_logging\nsetup_logging(0)\n"
            "print('transformers' in sys.modules, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.split() == ["False", "False"], proc.stderr


def test_a_closed_stdout_ends_the_run_quietly(tmp_path, tiny_text_only_ner):
    posts = write_jsonl(tmp_path / "posts.jsonl", [{"id": i, "text": f"Obama visits Berlin {i} " * 8}
                                                   for i in range(600)])
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "mmib_cli", "annotate", str(posts), "-o", "-", "-m",
                             str(tiny_text_only_ner), "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    first = proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert json.loads(first)["line"] == 1
    assert "stdout was closed" not in stderr and " posts (" not in stderr and "Error" not in stderr, stderr


def test_a_signal_swallowed_by_native_code_is_still_an_interruption(tmp_path, monkeypatch):
    """safetensors turns the `Interrupted` raised inside it into a ValueError: the run still exits 143, quietly."""
    import signal

    from mmib_cli import signals
    from mmib_cli.runs import preflight as preflight_module

    def swallowing(opts):
        try:
            signals._first(signal.SIGTERM, None)
        except signals.Interrupted:
            raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'")

    monkeypatch.setattr(signals, "_received", [])
    monkeypatch.setattr(preflight_module, "preflight", swallowing)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        posts = write_jsonl(tmp_path / "posts.jsonl", [{"id": 1, "text": "Obama visits Berlin"}])
        result = invoke("annotate", posts, "-o", tmp_path / "out.jsonl", expect=143)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert "Error" not in result.stderr and "interrupted by SIGTERM" in result.stderr


@pytest.mark.parametrize("extra, code, needle", [
    (["-m", "mmib-defualt"], 1, "did you mean 'mmib-default'?"),
    (["--images", "no-such-dir"], 2, "--images no-such-dir: no such directory"),
    (["--output-json", "exists.json"], 2, "already exists"),
])
def test_eval_usage_errors_come_before_torch_is_imported(tmp_path, extra, code, needle):
    (tmp_path / "data.txt").write_text("Obama\tB-PER\n\n")
    (tmp_path / "exists.json").write_text("{}")
    proc, modules = _run_cli(["eval", "ner", "--data", "data.txt", *extra], tmp_path)
    assert proc.returncode == code, proc.stderr
    assert needle in proc.stderr and "torch" not in modules
