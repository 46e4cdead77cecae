"""The run plan (`mmib_cli.runs`): one description of a run shared by every engine, and the CLI boundary."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmib_cli.cli import cli
from mmib_cli.errors import InvalidCheckpoint, UsageError
from mmib_cli.choices import Engine, Mode
from mmib_cli.runs import ChunkRule, RunOptions, RunSummary

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def src(tmp_path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": f"post {i}"}) + "\n" for i in range(1, 11)))
    return path


def test_plan_and_ray_engine_import_without_torch():
    code = ("import sys; import mmib_cli.runs, mmib_cli.engines.ray, mmib_cli.io.jsonl; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={"PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("task, relations, mode", [
    ("annotate", False, Mode.ANNOTATE), ("annotate", True, Mode.ANNOTATE_RELATIONS),
    ("relations", False, Mode.RELATIONS),
])
def test_mode_and_relation_settings(src, task, relations, mode):
    opts = RunOptions(task=task, input_path=str(src), output="-", relations=relations, min_score=0.5)
    assert opts.mode == mode
    assert opts.relation_settings.pair is (task == "annotate") and opts.relation_settings.min_score == 0.5


def test_select_applies_limit_shard_and_done(src):
    lines = [(n, n) for n in range(1, 11)]
    opts = RunOptions(task="annotate", input_path=str(src), output="-", limit=8, shard=(2, 3))
    assert [n for n, _ in opts.select(lines)] == [2, 5, 8]
    assert [n for n, _ in opts.select(lines, done={5})] == [2, 8]


def test_chunk_rule_is_one_rule_for_every_engine(src):
    opts = RunOptions(task="annotate", input_path=str(src), output="-", batch_size=8)
    assert opts.chunk_rule == ChunkRule(128, max_images=32, first=8)
    assert RunOptions(task="annotate", input_path=str(src), output="-", chunk_size=5).chunk_rule == ChunkRule(5)


def test_check_tasks_names_the_missing_part(src):
    opts = RunOptions(task="annotate", input_path=str(src), output="-", relations=True)
    opts.check_tasks({"ner", "re"}, "m@1")
    with pytest.raises(InvalidCheckpoint, match="relation \\(re\\) model"):
        opts.check_tasks({"ner"}, "m@1")
    with pytest.raises(InvalidCheckpoint, match="entity \\(ner\\) model"):
        RunOptions(task="annotate", input_path=str(src), output="-").check_tasks({"re"}, "m@1")
    RunOptions(task="relations", input_path=str(src), output="-").check_tasks({"re"}, "m@1")


@pytest.mark.parametrize("changes, needle", [
    ({"resume": True, "force": True}, "--resume or --force"),
    ({"resume": True}, "stdout"),
    ({"engine": "ray"}, "stdin/stdout"),
    ({"input_path": "s3://bucket/in.jsonl"}, "--engine ray"),
    ({"input_path": "/no/such/file.jsonl"}, "does not exist"),
])
def test_check_raises_usage_errors(src, changes, needle):
    values = {"task": "annotate", "input_path": str(src), "output": "-", **changes}
    with pytest.raises(UsageError, match=needle):
        RunOptions(**values).check()


def test_ray_paths_are_made_absolute(src, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opts = RunOptions.from_cli(task="annotate", input_path=src.name, output="shards", engine="ray", shard="1/2")
    assert opts.output == str(tmp_path / "shards") and opts.input_path == str(src) and opts.shard == (1, 2)
    assert opts.engine is Engine.RAY


def test_summary_counts_merge_and_exit_code():
    part = RunSummary()
    for record in ({"entities": [1, 2], "relations": [1]}, {"error": {"type": "InvalidJSON"}},
                   {"skipped": {"reason": "x"}}):
        part.count(record)
    total = RunSummary()
    total.merge(json.loads(json.dumps(part.counts())))
    total.merge(part.counts())
    assert (total.posts, total.annotated, total.errors, total.skipped) == (6, 2, 2, 2)
    assert (total.entities, total.relations, total.error_types) == (4, 2, {"InvalidJSON": 2})
    assert int(total.finish(1.0).exit_code) == 3


# -- the CLI boundary --------------------------------------------------------------------------------------------
def _boom(*args, **kwargs):
    raise ValueError("a bug deep in the library")


def test_a_library_value_error_is_not_a_usage_error(src, tmp_path, monkeypatch):
    import mmib_cli.engines

    monkeypatch.setattr(mmib_cli.engines, "execute", _boom)
    result = CliRunner().invoke(cli, ["annotate", str(src), "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1, result.output
    assert "Usage:" not in result.stderr and "Traceback" not in result.stderr
    assert "Error: unexpected ValueError: a bug deep in the library" in result.stderr and "-v" in result.stderr


def test_a_library_value_error_keeps_its_traceback_with_verbose(src, tmp_path, monkeypatch):
    import mmib_cli.engines

    monkeypatch.setattr(mmib_cli.engines, "execute", _boom)
    result = CliRunner().invoke(cli, ["-v", "annotate", str(src), "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)


@pytest.mark.parametrize("args, needle", [
    (["--device", "tpu"], "device"),
    (["--engine", "local", "--concurrency", "2"], "--concurrency"),
])
def test_bad_option_values_are_usage_errors(src, tmp_path, args, needle):
    result = CliRunner().invoke(cli, ["annotate", str(src), "-o", str(tmp_path / "o.jsonl"), *args])
    assert result.exit_code == 2 and "Usage:" in result.stderr and needle in result.stderr


def test_fingerprint_names_the_image_root_however_it_is_spelled(src, tmp_path, monkeypatch):
    from mmib_cli.runs.provenance import ModelInfo, RunFingerprint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pics").mkdir()
    model = ModelInfo("m@1", frozenset({"ner"}), "sha256:0")
    relative, absolute = (RunFingerprint.of(RunOptions(task="annotate", input_path=str(src), output="o.jsonl",
                                                       image_root=root), model)
                          for root in ("pics", str(tmp_path / "pics")))
    assert relative == absolute and "input_sha256" not in relative.to_json()  # the input is proven line by line



def test_model_digest_ignores_the_card_and_metrics_but_not_the_weights(tiny_bert_dir, tmp_path):
    from conftest import build_tiny_checkpoint
    from mmib_cli.runs.provenance import describe_model

    model = build_tiny_checkpoint(tmp_path / "m", "ner", tiny_bert_dir, with_images=False)
    before = describe_model(str(model)).digest
    (model / "README.md").write_text("# a corrected model card\n", encoding="utf-8")
    (model / "metrics.json").write_text("{}\n", encoding="utf-8")
    assert describe_model(str(model)).digest == before
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "stride": 4}), encoding="utf-8")
    assert describe_model(str(model)).digest != before


def test_a_local_run_resolves_its_model_once(tiny_text_only_ner, tmp_path, monkeypatch):
    """Issue 28: preflight resolves `--model` into a ModelInfo; the engine and the loader use it as it is."""
    from cli_helpers import invoke, write_jsonl
    from mmib_cli.storage import resolve

    calls = []
    real = resolve.resolve_model

    def counting(model, **kwargs):
        calls.append(model)
        return real(model, **kwargs)

    monkeypatch.setattr(resolve, "resolve_model", counting)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "Obama visits Berlin"}])
    invoke("annotate", src, "-o", tmp_path / "out.jsonl", "-m", tiny_text_only_ner, "--num-workers", "0")
    assert calls == [str(tiny_text_only_ner)]
