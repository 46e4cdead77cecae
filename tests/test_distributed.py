"""`--engine ray`: Ray Data gives exactly the local pipeline's records and summary; usage errors without Ray.

Tests that need Ray are skipped cleanly when it is not installed (`pip install "mmib[ray]"`); they share one
module-scoped local Ray instance (2 CPUs) because starting Ray is slow.
"""
from __future__ import annotations

import json
import shutil
import sys

import pytest
from cli_helpers import invoke, one_torch_thread

from mmib_cli.errors import ExitCode, OutputExists
from mmib_cli.engines.local import run_pipeline
from mmib_cli.runs import RunOptions, RunSummary


@pytest.fixture()
def posts_file(tmp_path, sample_images):
    """Posts with a relative image path, a missing image, a malformed line, a bad record and a blank line."""
    (tmp_path / "pics").mkdir()
    shutil.copy(sample_images["red"], tmp_path / "pics" / "red.jpg")
    lines = [
        json.dumps({"id": "a", "text": "Kawhi Leonard visits New York with the Raptors", "image": "pics/red.jpg"}),
        json.dumps({"id": "b", "text": "no picture here", "image": "pics/missing.jpg", "meta": {"k": [1, 2.5]}}),
        '{"id": "c", "text": "broken',
        "",
        json.dumps({"id": "d", "text": 5}),
        "[1, 2]",
        json.dumps({"text": "Obama and Biden in Zürich 🎉", "tokens": None}, ensure_ascii=False),
        json.dumps({"id": 8, "text": "St. Louis loves Obama"}),
    ]
    path = tmp_path / "posts.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _line(raw: bytes) -> int:
    return json.loads(raw)["line"]


# -- without Ray ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--address", "auto"], "--address"),
    (["--concurrency", "2"], "--concurrency"),
    (["--engine", "ray", "-o", "-"], "stdin/stdout"),
    (["--engine", "ray", "--resume"], "--resume"),
    (["--engine", "ray", "--shard", "3/2"], "--shard"),
])
def test_engine_usage_errors(posts_file, tmp_path, args, message):
    argv = ["annotate", str(posts_file), "-o", str(tmp_path / "out"), *args]
    result = invoke(*argv, expect=2)
    assert message in result.stderr


def test_engine_ray_without_ray_installed(posts_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = invoke("annotate", posts_file, "-o", tmp_path / "out", "--engine", "ray", expect=1)
    assert 'pip install "mmib[ray]"' in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_passes_ray_options(posts_file, tmp_path, monkeypatch):
    import mmib_cli.engines.ray  # noqa: F401 - registers the real runner first
    from mmib_cli.choices import Engine
    from mmib_cli.engines import ENGINES

    seen = {}

    def fake_run_ray(opts, ray_options, model):
        seen.update(opts=opts, ray_options=ray_options, model=model)
        return RunSummary(exit_code=ExitCode.PARTIAL)

    monkeypatch.setitem(ENGINES, Engine.RAY, fake_run_ray)
    monkeypatch.chdir(tmp_path)
    invoke("relations", posts_file, "-o", "shards", "--engine", "ray", "--address", "ray://head:10001",
           "--concurrency", "8", "--gpus-per-worker", "0.5", "--pair", "--shard", "2/4", expect=3)
    opts, ray_options = seen["opts"], seen["ray_options"]
    assert (ray_options.address, ray_options.concurrency, ray_options.gpus_per_worker) == ("ray://head:10001", 8, 0.5)
    assert seen["model"].label.startswith("mmib-default") and "ner" in seen["model"].tasks  # resolved once, passed on
    assert opts.task == "relations" and opts.pair and opts.shard == (2, 4)
    assert opts.output == str(tmp_path / "shards")  # absolute: workers may run elsewhere


def test_annotator_stage_without_ray(posts_file, tiny_bundle, tmp_path):
    """The actor's code path (reader rows → RayAnnotator → writer counts) gives the local records, no Ray needed."""
    import numpy as np

    from mmib_cli.engines.ray import RayAnnotator, encode_line
    from mmib_cli.io.jsonl import read_lines

    local_out = tmp_path / "local.jsonl"
    local = run_pipeline(RunOptions(task="annotate", input_path=str(posts_file), output=str(local_out),
                                         model=str(tiny_bundle), num_workers=0, progress=False, online=False))
    rows = [encode_line(line, value) for line, value in read_lines(posts_file)]
    batch = {key: np.array([row[key] for row in rows], dtype=object) for key in ("line", "record", "error")}
    annotator = RayAnnotator(str(tiny_bundle), prepare_settings={"base_dir": posts_file.parent}, device="cpu",
                             online=False)
    out = annotator(batch)
    assert list(out["line"]) == [1, 2, 3, 4, 5, 6, 7, 8]  # the blank line 4 is a `skipped` record
    assert list(out["record"]) == local_out.read_bytes().splitlines(keepends=True)
    shard = RunSummary()  # what a shard writer counts and sends back
    for raw in out["record"]:
        shard.count(json.loads(raw))
    merged = RunSummary()
    merged.merge(json.loads(json.dumps(shard.counts())))
    assert merged.counts() == {key: getattr(local, key) for key in merged.counts()}


# -- with a local Ray instance --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    with pytest.MonkeyPatch.context() as patch:
        # Ray lowers its workers' priority by 15 by default: on a busy test machine the actor then barely runs
        patch.setenv("RAY_worker_niceness", "0")
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_gives_the_local_records_and_summary(ray_session, tiny_bundle, posts_file, tmp_path):
    from mmib_cli.engines.ray import RayOptions, run_ray

    common = dict(task="annotate", input_path=str(posts_file), model=str(tiny_bundle), relations=True,
                  progress=False, online=False)
    local_out = tmp_path / "local.jsonl"
    with one_torch_thread():  # as a 1-CPU Ray actor (OMP_NUM_THREADS=1): same float reductions, same scores
        local = run_pipeline(RunOptions(output=str(local_out), num_workers=0, **common))
    shards = tmp_path / "shards"
    remote = run_ray(RunOptions(output=str(shards), engine="ray", **common), RayOptions(concurrency=1))

    expected = local_out.read_bytes().splitlines(keepends=True)
    assert [_line(r) for r in expected] == [1, 2, 3, 4, 5, 6, 7, 8]
    files = sorted(p.name for p in shards.iterdir())
    assert files and all(n.startswith("part-") and n.endswith(".jsonl") for n in files)  # no temporary left
    got = [raw for name in files for raw in (shards / name).read_bytes().splitlines(keepends=True)]
    assert sorted(got, key=_line) == expected  # byte-identical lines: records, error records, line numbers
    assert local.exit_code == remote.exit_code == ExitCode.PARTIAL
    for key in ("posts", "annotated", "entities", "relations", "errors", "skipped", "error_types"):
        assert getattr(remote, key) == getattr(local, key), key
    assert remote.error_types == {"InvalidJSON": 1, "InvalidInput": 2}
    assert json.loads(expected[0])["image_used"] is True and "image_error" in json.loads(expected[1])

    with pytest.raises(OutputExists):  # a non-empty output directory needs --force
        run_ray(RunOptions(output=str(shards), engine="ray", **common), RayOptions(concurrency=1))
