"""`average_checkpoints`: the mean of continued checkpoints (a model soup), refused across architectures."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import build_tiny_checkpoint
from mmib_cli.checkpoint.averaging import average_checkpoints
from mmib_cli.storage.format import load_state
from mmib_cli.errors import InvalidCheckpoint


@pytest.fixture(scope="module")
def two_runs(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("soup")
    return [build_tiny_checkpoint(root / f"run{seed}", "ner", tiny_bert_dir, with_images=False, seed=seed)
            for seed in (0, 1)]


def test_every_tensor_is_the_mean_and_the_result_loads(two_runs, tmp_path):
    from mmib_cli.checkpoint.assemble import load_model

    out = average_checkpoints(two_runs, tmp_path / "avg", dtype=None)
    (config_a, a), (_, b), (config, mean) = load_state(two_runs[0]), load_state(two_runs[1]), load_state(out)
    assert config == config_a and mean.keys() == a.keys()
    floating = [name for name in a if a[name].is_floating_point()]
    assert any(not (a[n] == b[n]).all() for n in floating)  # the runs differ, so the test can fail
    for name in floating:
        assert (mean[name] == (a[name] + b[name]) / 2).all(), name
    assert load_model(out).model.config.task == "ner"
    assert "average_of" in (out / "training_args.json").read_text()


def test_a_checkpoint_averaged_with_itself_is_unchanged(two_runs, tmp_path):
    out = average_checkpoints([two_runs[0], two_runs[0]], tmp_path / "same", dtype=None)
    _, original = load_state(two_runs[0])
    _, mean = load_state(out)
    assert all((mean[n] == original[n]).all() for n in original)


def test_half_precision_storage(two_runs, tmp_path):
    from safetensors import safe_open

    out = average_checkpoints(two_runs, tmp_path / "fp16")
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        dtypes = {str(handle.get_slice(k).get_dtype()) for k in handle.keys()}
    assert "F16" in dtypes and "F32" not in dtypes


def test_other_architectures_and_single_checkpoints_are_refused(two_runs, tiny_bert_dir, tmp_path):
    other = build_tiny_checkpoint(tmp_path / "wide", "ner", tiny_bert_dir, with_images=False, latent_size=8)
    with pytest.raises(InvalidCheckpoint, match="latent_size"):
        average_checkpoints([two_runs[0], other], tmp_path / "bad")
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints([two_runs[0]], tmp_path / "one")
    assert not (tmp_path / "bad").exists()


def test_a_setting_an_older_version_did_not_write_counts_as_its_default(two_runs, tmp_path):
    import json
    import shutil

    older = tmp_path / "older"
    shutil.copytree(two_runs[1], older)
    config = json.loads((older / "config.json").read_text())
    assert config.pop("relation_temperature") == 1.0  # the default, written by newer versions only
    (older / "config.json").write_text(json.dumps(config))
    average_checkpoints([two_runs[0], older], tmp_path / "avg")
    config["stride"] = config["stride"] + 1
    (older / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidCheckpoint, match="stride"):
        average_checkpoints([two_runs[0], older], tmp_path / "bad")


def test_the_script_names_a_missing_checkpoint_without_a_traceback(two_runs, tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(repo / "scripts" / "average_checkpoints.py"), str(two_runs[0]),
                             str(tmp_path / "nowhere"), "-o", str(tmp_path / "avg")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "nowhere does not exist" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "avg").exists()
