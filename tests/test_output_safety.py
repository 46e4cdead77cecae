"""Issue 25, points 1 and 2: no file next to an output is written through a planted link, and no command writes over
the file it reads (every command, one mechanism: mmib_cli.io.safefile)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from cli_helpers import invoke, make_posts, write_jsonl

from mmib_cli.errors import MMIBError, UsageError
from mmib_cli.io.lock import OutputLock
from mmib_cli.io.safefile import (UnsafeOutput, check_output_name, open_existing, open_new, refuse_same_file,
                                  write_atomic)

VICTIM = b"precious: must never be written by mmib\n"


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_bytes(VICTIM)
    return path


@pytest.fixture(scope="module")
def posts(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("posts") / "in.jsonl", make_posts(6, seed=3))


def _output_records(path: Path) -> Path:
    rows = [{"id": "a", "line": 1, "text": "Obama visits Berlin", "tokens": [
        {"text": "Obama", "start": 0, "end": 5}, {"text": "visits", "start": 6, "end": 12},
        {"text": "Berlin", "start": 13, "end": 19}], "bio": ["B-PER", "O", "B-LOC"],
        "entities": [{"text": "Obama", "label": "PER", "start": 0, "end": 5, "score": 0.9}], "relations": [],
        "image_used": False, "model": "m@1"}]
    return write_jsonl(path, rows)


# -- the mechanism ----------------------------------------------------------------------------------------------
def test_open_new_never_opens_a_planted_link_or_hard_link(tmp_path, victim):
    link = tmp_path / "side"
    link.symlink_to(victim)
    os.close(open_new(link))  # the link is removed and a new file created in its place
    assert not link.is_symlink() and victim.read_bytes() == VICTIM
    hard = tmp_path / "hard"
    os.link(victim, hard)
    with pytest.raises(UnsafeOutput, match="hard links"):
        open_existing(hard)
    with pytest.raises(UnsafeOutput):
        open_new(link, replace=False)


@pytest.mark.parametrize("planted", ["symlink", "dangling", "hardlink"])
def test_a_lock_file_planted_as_a_link_is_refused(tmp_path, victim, planted):
    out = tmp_path / "out.jsonl"
    lock = tmp_path / "out.jsonl.lock"
    if planted == "symlink":
        lock.symlink_to(victim)
    elif planted == "dangling":
        lock.symlink_to(tmp_path / "elsewhere" / "new-file")
    else:
        os.link(victim, lock)
    with pytest.raises(UnsafeOutput):
        OutputLock(out).acquire()
    assert victim.read_bytes() == VICTIM and not (tmp_path / "elsewhere" / "new-file").exists()


def test_write_atomic_replaces_a_link_at_the_temporary_and_final_names(tmp_path, victim):
    final, temporary = tmp_path / "f.json", tmp_path / "f.json.tmp"
    temporary.symlink_to(victim)
    final.symlink_to(victim)
    write_atomic(final, b"{}\n", temporary=temporary)
    assert final.read_bytes() == b"{}\n" and not final.is_symlink() and victim.read_bytes() == VICTIM


# -- annotate / relations ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sidecar, force, code", [
    (".lock", True, 1), (".partial", True, 0), (".partial", False, 2), (".run.json.tmp", True, 0),
    (".run.lines", True, 0), (".run.json", True, 0),
])
def test_annotate_never_writes_through_a_planted_sidecar(posts, tiny_text_only_ner, tmp_path, victim, sidecar,
                                                         force, code):
    out = tmp_path / "out.jsonl"
    (tmp_path / f"out.jsonl{sidecar}").symlink_to(victim)
    args = ["annotate", posts, "-o", out, "-m", tiny_text_only_ner, "--num-workers", "0"] + (["-F"] if force else [])
    result = invoke(*args)
    assert result.exit_code == code, result.output
    assert victim.read_bytes() == VICTIM
    assert not out.is_symlink()
    if code == 1:
        assert "symbolic link" in result.stderr and "Traceback" not in result.output


def test_resume_refuses_a_partial_planted_as_a_link(posts, tiny_text_only_ner, tmp_path, victim):
    out = tmp_path / "out.jsonl"
    victim.write_bytes(b'{"id":"x","line":1}\n')
    (tmp_path / "out.jsonl.partial").symlink_to(victim)
    result = invoke("annotate", posts, "-o", out, "-m", tiny_text_only_ner, "--resume", "--num-workers", "0")
    assert result.exit_code == 1 and "symbolic link" in result.stderr
    assert victim.read_bytes() == b'{"id":"x","line":1}\n' and not out.exists()


# -- report / export ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command, name", [("report", "page.html"), ("export", "tasks.json")])
@pytest.mark.parametrize("sidecar", [".partial", ".lock"])
def test_report_and_export_never_write_through_a_planted_sidecar(tmp_path, victim, command, name, sidecar):
    src = _output_records(tmp_path / "out.jsonl")
    (tmp_path / f"{name}{sidecar}").symlink_to(victim)
    result = invoke(command, src, "-o", tmp_path / name)
    assert victim.read_bytes() == VICTIM
    if sidecar == ".lock":
        assert result.exit_code == 1 and "symbolic link" in result.stderr
    else:
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).is_file() and not (tmp_path / name).is_symlink()


def test_the_ray_output_directory_lock_is_never_followed(tmp_path, victim):
    from mmib_cli.engines.ray import _output_lock

    (tmp_path / "shards.lock").symlink_to(victim)
    with pytest.raises(UnsafeOutput):
        with _output_lock(str(tmp_path / "shards")):
            pass
    assert victim.read_bytes() == VICTIM


# -- train / eval outputs -------------------------------------------------------------------------------------
def test_checkpoint_and_training_files_replace_a_planted_link(tmp_path, victim):
    import torch

    from mmib_cli.storage.format import atomic_write, save_state

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in ("config.json", "model.safetensors", "README.md", "metrics.json"):
        (ckpt / name).symlink_to(victim)
    save_state(ckpt, {"task": "ner"}, {"w": torch.zeros(2)}, card="# card\n")
    atomic_write(ckpt / "metrics.json", "{}\n")
    assert victim.read_bytes() == VICTIM
    assert not any((ckpt / name).is_symlink() for name in ("config.json", "model.safetensors", "README.md"))


def test_eval_output_json_may_not_be_the_data_file(tmp_path):
    data = tmp_path / "test.txt"
    data.write_text("IMGID:1\nObama\tB-PER\n\n", encoding="utf-8")
    result = invoke("eval", "ner", "--data", data, "--output-json", tmp_path / "." / "test.txt", "-F",
                    "-m", "no-such-model")
    assert result.exit_code == 2 and "is the input file" in result.stderr
    assert data.read_text(encoding="utf-8") == "IMGID:1\nObama\tB-PER\n\n"


def test_train_refuses_a_data_file_it_would_overwrite(tmp_path):
    from mmib_cli.workflows.train import TrainOptions

    out = tmp_path / "ckpt"
    (out / "corrections").mkdir(parents=True)
    data = out / "corrections" / "train.txt"
    data.write_text("Obama\tB-PER\n\n", encoding="utf-8")
    with pytest.raises(UsageError, match="is the input file"):
        TrainOptions.from_cli(task="ner", train_files=(str(data),), valid_files=(), output=str(out))


# -- point 2: never over the input ----------------------------------------------------------------------------
def _names_of(src: Path, how: str, tmp_path: Path) -> Path:
    if how == "same":
        return src
    if how == "dot":
        return Path(os.path.relpath(src.parent)) / "." / src.name
    if how == "hardlink":
        os.link(src, tmp_path / "hard.jsonl")
        return tmp_path / "hard.jsonl"
    (tmp_path / "link.jsonl").symlink_to(src)
    return tmp_path / "link.jsonl"


@pytest.mark.parametrize("command", ["report", "export"])
@pytest.mark.parametrize("how", ["same", "dot", "hardlink", "symlink"])
def test_report_and_export_refuse_to_write_over_their_input(tmp_path, command, how):
    src = _output_records(tmp_path / "out.jsonl")
    before = src.read_bytes()
    result = invoke(command, src, "-o", _names_of(src, how, tmp_path), "-F")
    assert result.exit_code == 2 and "is the input file" in result.stderr, result.output
    assert src.read_bytes() == before and not (tmp_path / "out.jsonl.partial").exists()


@pytest.mark.parametrize("how", ["dot", "hardlink"])
def test_annotate_refuses_to_write_over_its_input(posts, tmp_path, how):
    src = tmp_path / "in.jsonl"
    src.write_bytes(posts.read_bytes())
    result = invoke("annotate", src, "-o", _names_of(src, how, tmp_path), "-F", "-m", "no-such-model")
    assert result.exit_code == 2 and "is the input file" in result.stderr
    assert src.read_bytes() == posts.read_bytes()


def test_annotate_refuses_an_input_that_is_the_outputs_partial(posts, tmp_path):
    out = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.partial").write_bytes(posts.read_bytes())
    result = invoke("annotate", tmp_path / "out.jsonl.partial", "-o", out, "--resume", "-m", "no-such-model")
    assert result.exit_code == 2 and "is the input file" in result.stderr


def test_stdout_redirected_onto_the_input_is_refused(tmp_path, monkeypatch):
    src = _output_records(tmp_path / "out.jsonl")
    with open(src, "ab") as handle:
        monkeypatch.setattr(sys, "stdout", handle)
        with pytest.raises(UsageError, match="stdout is the input file"):
            refuse_same_file([src], ["-"])
    with open(src, "rb") as handle:
        monkeypatch.setattr(sys, "stdin", handle)
        with pytest.raises(UsageError, match="is the input file stdin"):
            refuse_same_file(["-"], [src])


@pytest.mark.parametrize("command", ["report", "export"])
def test_a_directory_output_is_a_usage_error_and_leaves_nothing(tmp_path, command):
    src = _output_records(tmp_path / "out.jsonl")
    target = tmp_path / "dir"
    target.mkdir()
    result = invoke(command, src, "-o", target)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "unexpected" not in result.stderr and "directory" in result.stderr
    assert not (tmp_path / "dir.partial").exists() and not (tmp_path / "dir.lock").exists()


def test_an_output_name_too_long_for_its_sidecars_is_refused_before_work(tmp_path):
    name = "o" * 250 + ".jsonl"
    with pytest.raises(UsageError, match="too long"):
        check_output_name(tmp_path / name, (".run.json.tmp",))
    check_output_name(tmp_path / "short.jsonl", (".run.json.tmp",))


def test_a_failed_sidecar_write_is_an_mmib_error_not_a_traceback(tmp_path):
    with pytest.raises(MMIBError, match="cannot write"):
        open_new(tmp_path / "missing" / "x.partial")


def test_the_ray_engine_refuses_an_input_inside_its_output_directory(tmp_path):
    from mmib_cli.runs import RunOptions

    shards = tmp_path / "shards"
    shards.mkdir()
    src = shards / "part-000000000001.jsonl"
    src.write_text('{"id": 1, "text": "a"}\n', encoding="utf-8")
    with pytest.raises(UsageError, match="inside the output directory"):
        RunOptions(task="annotate", input_path=str(src), output=str(shards), engine="ray", force=True).check()
