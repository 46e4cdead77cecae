"""Unattended runs (issue 13): no silent loss, no hang, one run per output, resume only what it was made from,
safe output targets, write errors and signals that end cleanly."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import invoke, make_posts, subprocess_env, write_jsonl

from mmib_cli.errors import MMIBError
from mmib_cli.io.lock import OutputLock
from mmib_cli.io.writer import OutputWriteError, partial_path
from mmib_cli.engines.local import run_pipeline
from mmib_cli.runs import RunOptions



@pytest.fixture(scope="module")
def posts(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("posts") / "in.jsonl", make_posts(12, seed=5))


@pytest.fixture(scope="module")
def reference(posts, tiny_text_only_ner, tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("reference") / "out.jsonl"
    result = invoke("annotate", posts, "-o", out, "-m", tiny_text_only_ner, "--num-workers", "0")
    assert result.exit_code == 0, result.output
    return out.read_bytes()


def _opts(posts: Path, out: Path, model: Path, **changes) -> RunOptions:
    values = dict(task="annotate", input_path=str(posts), output=str(out), model=str(model), num_workers=0,
                  chunk_size=2, progress=False, online=False)
    return RunOptions(**{**values, **changes})


def _complete_prefix(data: bytes, reference: bytes) -> int:
    """Number of complete reference lines `data` holds (asserting it is exactly such a prefix)."""
    assert data == b"" or data.endswith(b"\n")
    lines = data.splitlines(keepends=True)
    assert lines == reference.splitlines(keepends=True)[: len(lines)]
    return len(lines)


# -- 1. worker and reader failures ------------------------------------------------------------------------------
def test_a_record_that_cannot_be_pickled_back_from_a_worker_is_not_lost(tiny_text_only_ner, tmp_path):
    deep = json.loads("[" * 600 + "]" * 600)  # parses, but pickling it exceeds the recursion limit
    rows = [{"id": i, "text": f"post number {i}", **({"meta": deep} if i == 2 else {})} for i in range(1, 6)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    outputs = {}
    for workers in ("0", "1"):
        out = tmp_path / f"out{workers}.jsonl"
        result = invoke("annotate", src, "-o", out, "-m", tiny_text_only_ner, "--num-workers", workers)
        assert result.exit_code in (0, 3), result.output
        outputs[workers] = out.read_bytes()
        assert [json.loads(x)["line"] for x in outputs[workers].splitlines()] == [1, 2, 3, 4, 5]
    assert outputs["0"] == outputs["1"]


def _die_on_line_5(line, obj, settings):
    from mmib_cli.annotation.annotator import prepare

    if line == 5:
        os._exit(7)  # a worker process killed mid-run
    return prepare(line, obj, settings)


def test_a_dead_worker_is_fatal_and_keeps_the_partial(posts, reference, tiny_text_only_ner, tmp_path, monkeypatch):
    import mmib_cli.engines.local as pipeline

    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(pipeline, "prepare", _die_on_line_5)
    with pytest.raises(MMIBError, match="--resume") as info:
        run_pipeline(_opts(posts, out, tiny_text_only_ner, num_workers=1))
    assert info.value.exit_code == 1 and not out.exists()
    assert _complete_prefix(partial_path(out).read_bytes(), reference) <= 4
    monkeypatch.undo()
    run_pipeline(_opts(posts, out, tiny_text_only_ner, resume=True))
    assert out.read_bytes() == reference


def test_a_failing_reader_is_fatal_and_keeps_the_partial(posts, reference, tiny_text_only_ner, tmp_path, monkeypatch):
    import mmib_cli.engines.local as pipeline

    real = pipeline.read_lines_traced

    def failing(source, **kwargs):
        for line, value, digest in real(source, **kwargs):
            if line == 7:
                raise OSError(errno.EIO, "Input/output error")
            yield line, value, digest

    monkeypatch.setattr(pipeline, "read_lines_traced", failing)
    out = tmp_path / "out.jsonl"
    result = invoke("annotate", posts, "-o", out, "-m", tiny_text_only_ner, "--num-workers", "0", "-b", "2")
    assert result.exit_code == 1 and "Traceback" not in result.output
    [message] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "Input/output error" in message and "out.jsonl.partial" in message
    assert _complete_prefix(partial_path(out).read_bytes(), reference) == 6  # chunks of 2 and 4 lines


# -- 3. one run per output --------------------------------------------------------------------------------------
def test_a_second_run_on_a_locked_output_fails_fast(posts, reference, tiny_text_only_ner, tmp_path):
    out = tmp_path / "out.jsonl"
    with OutputLock(out):
        result = invoke("annotate", posts, "-o", out, "-m", tiny_text_only_ner, "--resume")
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "in use by another mmib run" in result.stderr and str(os.getpid()) in result.stderr
        assert not out.exists() and not partial_path(out).exists()
    result = invoke("annotate", posts, "-o", out, "-m", tiny_text_only_ner, "--num-workers", "0")
    assert result.exit_code == 0 and out.read_bytes() == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.jsonl.run.json",  # lock file removed
                                                          "out.jsonl.run.lines"]


@pytest.mark.parametrize("step", ["flock", "_same_file", "ftruncate"])
def test_a_signal_while_locking_leaves_no_lock_file(tmp_path, monkeypatch, step):
    """`Interrupted` at any step of taking the lock (the writer included): no lock file stays, the output is free."""
    import mmib_cli.io.lock as lock
    from mmib_cli.io.writer import AtomicJSONLWriter
    from mmib_cli.signals import Interrupted

    out = tmp_path / "out.jsonl"
    module, name = {"flock": (lock.fcntl, "flock"), "_same_file": (lock, "_same_file"),
                    "ftruncate": (lock.os, "ftruncate")}[step]
    real = getattr(module, name)
    calls = []

    def interrupted(*args, **kwargs):
        if not calls:
            calls.append(name)
            raise Interrupted(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)
    with pytest.raises(Interrupted):
        AtomicJSONLWriter(out)
    assert calls and not lock.lock_path(out).exists()
    with OutputLock(out):  # nothing holds it
        assert lock.lock_path(out).exists()
    assert not lock.lock_path(out).exists()


def test_the_lock_is_held_while_the_model_loads(posts, tiny_text_only_ner, tmp_path, monkeypatch):
    import mmib_cli.engines.local as pipeline

    out = tmp_path / "out.jsonl"
    seen = {}
    real = pipeline.Annotator.from_pretrained

    def loading(*args, **kwargs):
        with pytest.raises(MMIBError, match="in use") as info:
            OutputLock(out).acquire()
        seen["message"] = str(info.value)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline.Annotator, "from_pretrained", loading)
    run_pipeline(_opts(posts, out, tiny_text_only_ner))
    assert str(os.getpid()) in seen["message"]


# -- 4. resume only what the output was made from ---------------------------------------------------------------
def _interrupted_run(posts: Path, out: Path, model: Path, lines: int = 5) -> None:
    """A finished run over the first `lines` lines, turned into the partial of an interrupted run."""
    run_pipeline(_opts(posts, out, model, limit=lines))
    os.replace(out, partial_path(out))


@pytest.mark.parametrize("change, needle", [
    ("edit", "is not the line its kept record was made from"),
    ("model", "made with model"),
    ("option", "options differ"),
    ("no-run-file", "is missing"),
])
def test_resume_refuses_another_input_model_or_options(posts, tiny_text_only_ner, tiny_bundle, tmp_path,
                                                       change, needle):
    src = tmp_path / "in.jsonl"
    src.write_bytes(posts.read_bytes())
    out = tmp_path / "out.jsonl"
    _interrupted_run(src, out, tiny_text_only_ner)
    kept = partial_path(out).read_bytes()
    args = ["annotate", src, "-o", out, "-m", tiny_text_only_ner, "--resume", "--num-workers", "0"]
    if change == "edit":
        src.write_bytes(src.read_bytes().replace(b"p0001", b"q0001"))
    elif change == "model":
        args[5] = tiny_bundle
    elif change == "option":
        args += ["--image-field", "photo"]
    else:
        (tmp_path / "out.jsonl.run.json").unlink()
    result = invoke(*args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert needle in result.stderr and "--force" in result.stderr
    assert partial_path(out).read_bytes() == kept and not out.exists()


def test_resume_continues_an_input_that_grew_at_its_end(posts, tiny_text_only_ner, tmp_path, check):
    src = tmp_path / "in.jsonl"
    first = posts.read_bytes().splitlines(keepends=True)
    src.write_bytes(b"".join(first[:8]))
    out = tmp_path / "out.jsonl"
    _interrupted_run(src, out, tiny_text_only_ner)
    src.write_bytes(b"".join(first))  # more lines appended since
    result = invoke("annotate", src, "-o", out, "-m", tiny_text_only_ner, "--resume", "--num-workers", "0")
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["line"] for x in out.read_bytes().splitlines()] == list(range(1, 13))


def test_resume_from_stdin_is_refused(posts, tiny_text_only_ner, tmp_path):
    out = tmp_path / "out.jsonl"
    _interrupted_run(posts, out, tiny_text_only_ner)
    result = invoke("annotate", "-", "-o", out, "-m", tiny_text_only_ner, "--resume", input=posts.read_bytes())
    assert result.exit_code == 2 and "regular file" in result.stderr


# -- 7. output targets ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["same", "symlink"])
def test_output_equal_to_the_input_is_refused(posts, tmp_path, how):
    src = tmp_path / "in.jsonl"
    src.write_bytes(posts.read_bytes())
    target = src
    if how == "symlink":
        target = tmp_path / "link.jsonl"
        target.symlink_to(src)
    result = invoke("annotate", src, "-o", target, "-F", "-m", "no-such-model")
    assert result.exit_code == 2 and "is the input" in result.stderr
    assert src.read_bytes() == posts.read_bytes()


def test_a_directory_output_is_refused_before_the_model_loads(posts, tmp_path):
    result = invoke("annotate", posts, "-o", tmp_path, "-F", "-m", "no-such-model")
    assert result.exit_code == 2 and "is a directory" in result.stderr and "no-such-model" not in result.stderr


def test_an_unwritable_output_is_found_before_the_model_loads(posts, tmp_path):
    result = invoke("annotate", posts, "-o", tmp_path / "missing" / "out.jsonl", "-m", "no-such-model")
    assert result.exit_code == 1 and "cannot write output" in result.stderr and "no-such-model" not in result.stderr


def test_dev_null_is_written_into_not_replaced(posts, tiny_text_only_ner):
    result = invoke("annotate", posts, "-o", os.devnull, "-F", "-m", tiny_text_only_ner, "--num-workers", "0")
    assert result.exit_code == 0, result.output
    assert Path(os.devnull).is_char_device() and not Path(os.devnull + ".partial").exists()


def test_a_fifo_output_is_written_into(posts, reference, tiny_text_only_ner, tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got = bytearray()
    reader = threading.Thread(target=lambda: got.extend(fifo.read_bytes()))
    reader.start()
    result = invoke("annotate", posts, "-o", fifo, "-m", tiny_text_only_ner, "--num-workers", "0")
    reader.join(60)
    assert result.exit_code == 0, result.output
    assert bytes(got) == reference and fifo.is_fifo()


def test_a_symlink_output_keeps_the_link(posts, reference, tiny_text_only_ner, tmp_path):
    real, link = tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    real.write_text("old\n")
    link.symlink_to(real)
    result = invoke("annotate", posts, "-o", link, "-F", "-m", tiny_text_only_ner, "--num-workers", "0")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and real.read_bytes() == reference


# -- 8. full disk and write errors ------------------------------------------------------------------------------
def test_a_full_disk_cuts_the_partial_back_and_resume_continues(posts, reference, tiny_text_only_ner, tmp_path,
                                                                monkeypatch):
    import mmib_cli.io.writer as writer_module

    real = writer_module._write_all
    calls = []

    def filling_up(fd, data):
        if not data.startswith(b"{"):  # the line digests (OUTPUT.run.lines) go first; they fit
            return real(fd, data)
        calls.append(data.count(b"\n"))
        if len(calls) == 1:  # the first flush gets half its bytes on disk, then the disk is full
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    monkeypatch.setattr(writer_module, "_write_all", filling_up)
    out = tmp_path / "out.jsonl"
    with pytest.raises(OutputWriteError, match="No space left on device") as info:
        run_pipeline(_opts(posts, out, tiny_text_only_ner))
    assert info.value.exit_code == 1 and "out.jsonl.partial" in str(info.value)
    assert _complete_prefix(partial_path(out).read_bytes(), reference) == sum(calls[:-1])  # the torn write is cut
    monkeypatch.undo()
    run_pipeline(_opts(posts, out, tiny_text_only_ner, resume=True))
    assert out.read_bytes() == reference


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_dev_full_is_one_error_line(posts, tiny_text_only_ner):
    result = invoke("annotate", posts, "-o", "/dev/full", "-F", "-m", tiny_text_only_ner, "--num-workers", "0")
    assert result.exit_code == 1 and "Traceback" not in result.output
    [message] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "/dev/full" in message and "No space left on device" in message


# -- 10. signals and pipes --------------------------------------------------------------------------------------
def _mmib(*args) -> list[str]:
    return [sys.executable, "-m", "mmib_cli", *map(str, args)]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_start_up_exits_quietly(posts, tiny_text_only_ner, tmp_path, signum, code):
    """Deterministic: the input is a pipe the test holds open, so the run cannot finish before the signal."""
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(_mmib("annotate", "-", "-o", out, "-m", tiny_text_only_ner), cwd=tmp_path,
                            env=subprocess_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not (tmp_path / "out.jsonl.lock").exists():
        time.sleep(0.01)  # the output is locked just before the model is resolved and loaded
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)  # closes the input only now
    assert proc.returncode == code, stderr.decode()
    assert b"Traceback" not in stderr and b"Aborted" not in stderr
    assert not out.exists() and not (tmp_path / "out.jsonl.lock").exists()


def test_a_second_sigint_exits_at_once(tiny_text_only_ner, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", make_posts(3000, seed=1))
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(_mmib("annotate", src, "-o", out, "-m", tiny_text_only_ner, "-b", "2", "--no-progress"),
                            cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = partial_path(out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr


def test_a_closed_stdout_ends_quietly(tiny_text_only_ner, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", make_posts(2000, seed=2))
    proc = subprocess.Popen(_mmib("annotate", src, "-o", "-", "-m", tiny_text_only_ner, "-b", "4"), cwd=tmp_path,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert json.loads(proc.stdout.readline())["line"] == 1  # `| head -1`
    proc.stdout.close()
    stderr = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode in (0, 141), stderr.decode()
    assert b"Traceback" not in stderr and b"Error" not in stderr


def test_the_ray_engine_locks_its_output_directory(posts, tmp_path):
    shards = tmp_path / "shards"
    with OutputLock(shards):
        result = invoke("annotate", posts, "-o", shards, "--engine", "ray")
    assert result.exit_code == 1 and "in use by another mmib run" in result.stderr
    assert not shards.exists()


def test_a_record_that_cannot_be_encoded_becomes_the_error_record_of_its_line(tmp_path):
    from mmib_cli.io.writer import AtomicJSONLWriter

    deep: list = []
    for _ in range(5000):  # deeper than json.dumps can go
        deep = [deep]
    out = tmp_path / "out.jsonl"
    with AtomicJSONLWriter(out) as writer:
        written = writer.write({"id": "a", "line": 3, "meta": deep})
        writer.write({"id": "b", "line": 4, "bad": {1, 2}})
    first, second = (json.loads(x) for x in out.read_bytes().splitlines())
    assert written == first and first["line"] == 3 and first["error"]["type"] == "UnserializableRecord"
    assert second["id"] == "b" and "cannot be written as JSON" in second["error"]["message"]


def test_a_ray_shard_that_cannot_be_written_is_one_clear_error(tmp_path):
    pytest.importorskip("pyarrow")
    import numpy as np

    from mmib_cli.engines.ray import _write_shard

    (tmp_path / "a-file").write_text("x")
    batch = {"line": np.array([1]), "record": np.array([b'{"id":1,"line":1}\n'], dtype=object)}
    with pytest.raises(OutputWriteError, match="cannot write shard .*part-000000000001.jsonl"):
        _write_shard(batch, output=str(tmp_path / "a-file"))
