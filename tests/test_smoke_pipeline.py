"""End-to-end smoke test of `mmib annotate` on the tiny bundle (the detailed pipeline suite is test_pipeline.py)."""
from __future__ import annotations

import json

from click.testing import CliRunner

from mmib_cli.cli import cli


def test_annotate_and_relations_run_on_tiny_bundle(tiny_bundle, sample_images, tmp_path):
    posts = tmp_path / "posts.jsonl"
    posts.write_text("\n".join(json.dumps(p) for p in [
        {"id": "a", "text": "Kawhi Leonard visits New York with the Raptors", "image": str(sample_images["red"])},
        {"id": "b", "text": "no picture here"},
        {"text": 5},
    ]) + "\n")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["annotate", str(posts), "-o", str(out), "--model", str(tiny_bundle),
                                      "--relations", "--num-workers", "0"], catch_exceptions=False)
    assert result.exit_code == 3, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r.get("id") for r in lines] == ["a", "b", 3]
    assert lines[0]["image_used"] is True and lines[1]["image_used"] is False
    assert lines[2]["error"]["type"] == "InvalidInput"
    assert len(lines[0]["bio"]) == len(lines[0]["tokens"]) == 8
    for ent in lines[0]["entities"]:
        assert lines[0]["text"][ent["start"]:ent["end"]] == ent["text"]
