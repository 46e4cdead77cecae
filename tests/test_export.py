"""`mmib export`: Label Studio tasks with pre-annotations, the matching labeling config, CoNLL."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cli_helpers import invoke, write_jsonl
from mmib_cli.data.conll import read_conll
from mmib_cli.workflows.export import ImageRefs, label_config, label_studio_task
from mmib_cli.text import tokenize

TEXT = "Kawhi Leonard 🚀 joins the Clippers in Los Angeles"


def annotated(text: str = TEXT, spans=(("Kawhi Leonard", "PER", 0.98), ("Clippers", "ORG", 0.6),
                                      ("Los Angeles", "LOC", 0.9)), rels=((0, 1, "/per/org/member_of", 0.7),),
              *, line: int = 1, image: str | None = "images/kawhi.jpg") -> dict:
    """An output record as `mmib annotate --relations` writes it (tokens, bio, entities, relations)."""
    entities = []
    for surface, label, score in spans:
        start = text.index(surface)
        entities.append({"text": surface, "label": label, "start": start, "end": start + len(surface),
                         "score": score})
    tokens = tokenize(text)
    bio = []
    for token in tokens:
        ent = next((e for e in entities if e["start"] <= token.start < e["end"]), None)
        bio.append("O" if ent is None else ("B-" if token.start == ent["start"] else "I-") + ent["label"])
    record = {"id": f"p{line}", "line": line, "text": text,
              "tokens": [{"text": t.text, "start": t.start, "end": t.end} for t in tokens], "bio": bio,
              "entities": entities,
              "relations": [{"head": entities[h], "tail": entities[t], "relation": r, "score": s}
                            for h, t, r, s in rels],
              "image_used": False, "model": "tiny@1"}
    if image:
        record["image"] = image
    return record


def test_task_has_exact_spans_and_relations_by_region_id():
    task = label_studio_task(annotated(), image="http://x/kawhi.jpg")
    assert task["data"] == {"text": TEXT, "image": "http://x/kawhi.jpg", "post_id": "p1", "line": 1}
    prediction = task["predictions"][0]
    assert prediction["model_version"] == "tiny@1" and prediction["score"] == 0.6
    regions = [r for r in prediction["result"] if r["type"] == "labels"]
    assert [r["value"]["labels"] for r in regions] == [["PER"], ["ORG"], ["LOC"]]
    for region in regions:
        assert region["from_name"] == "label" and region["to_name"] == "text"
        assert TEXT[region["value"]["start"]:region["value"]["end"]] == region["value"]["text"]  # code points
    assert regions[1]["value"]["start"] == 26  # after the emoji: one code point, not two UTF-16 units
    (relation,) = [r for r in prediction["result"] if r["type"] == "relation"]
    assert relation == {"type": "relation", "from_id": regions[0]["id"], "to_id": regions[1]["id"],
                        "direction": "right", "labels": ["/per/org/member_of"]}
    assert len({r["id"] for r in regions}) == 3


def test_pairs_outside_the_entities_get_regions_or_are_left_out():
    record = annotated(rels=())
    outside = {"text": "Leonard", "label": "PER", "start": 6, "end": 13}
    unlabelled = {"start": 0, "end": 5}
    record["relations"] = [{"head": outside, "tail": record["entities"][1], "relation": "/per/org/member_of"},
                           {"head": unlabelled, "tail": record["entities"][1], "relation": "/per/org/member_of"},
                           {"head": record["entities"][0], "tail": record["entities"][2], "relation": "None"}]
    result = label_studio_task(record)["predictions"][0]["result"]
    regions = {r["id"]: r["value"]["text"] for r in result if r["type"] == "labels"}
    relations = [(regions[r["from_id"]], regions[r["to_id"]]) for r in result if r["type"] == "relation"]
    assert relations == [("Leonard", "Clippers")]  # the unlabelled head and the None pair are not exported
    assert label_studio_task(annotated(spans=(), rels=()))["predictions"][0] == {
        "model_version": "tiny@1", "score": 1.0, "result": []}


def test_a_hand_edited_record_exports_only_valid_regions_and_their_scores():
    """Spans out of range, offsets that are not integers (`true`) and scores outside [0, 1] never reach a task, and
    the task score is the lowest score of what is exported (not of the entities that were left out)."""
    record = annotated(spans=(("Kawhi Leonard", "PER", 0.98), ("Clippers", "ORG", 0.9)), rels=())
    record["entities"] += [{"text": "x", "label": "LOC", "start": 40, "end": 30, "score": 0.1},
                           {"text": "K", "label": "PER", "start": True, "end": 5, "score": 0.2},
                           {"text": "Los Angeles", "label": "LOC", "start": 38, "end": 49, "score": 2}]
    record["relations"] = [{"head": record["entities"][0], "tail": record["entities"][1],
                            "relation": "/per/org/member_of", "score": float("nan")}]
    prediction = label_studio_task(record)["predictions"][0]
    regions = [r for r in prediction["result"] if r["type"] == "labels"]
    assert [(r["value"]["text"], r.get("score")) for r in regions] == [
        ("Kawhi Leonard", 0.98), ("Clippers", 0.9), ("Los Angeles", None)]
    assert prediction["score"] == 0.9
    assert [r["labels"] for r in prediction["result"] if r["type"] == "relation"] == [["/per/org/member_of"]]
    record.update(entities=5, relations=5)  # not lists at all: nothing to export, no crash
    assert label_studio_task(record)["predictions"][0]["result"] == []


def test_image_references(tmp_path):
    (tmp_path / "images").mkdir()
    refs = ImageRefs(tmp_path)
    assert refs.reference("images/a b.jpg") == "images/a b.jpg" and refs.reference(None) == ""
    assert ImageRefs(tmp_path, url_prefix="https://cdn.example/posts/").reference("images/a b.jpg") == \
        "https://cdn.example/posts/images/a%20b.jpg"
    local = ImageRefs(tmp_path, local_files_root=tmp_path.parent)
    assert local.reference("images/a.jpg") == f"/data/local-files/?d={tmp_path.name}/images/a.jpg"
    with pytest.raises(ValueError, match="outside --local-files-root"):
        ImageRefs(tmp_path, local_files_root=tmp_path / "images").reference("../a.jpg")
    with pytest.raises(ValueError, match="not both"):
        ImageRefs(tmp_path, url_prefix="http://x", local_files_root=tmp_path)


@pytest.fixture()
def output_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "out.jsonl", [
        annotated(line=1),
        {"id": "p2", "line": 2, "error": {"type": "InvalidJSON", "message": "bad"}},
        annotated("Obama visits Berlin", (("Obama", "PER", 0.9), ("Berlin", "LOC", 0.8)), (), line=3, image=None),
        {"id": "p4", "line": 4, "skipped": {"reason": "image not found"}},
    ])


def test_export_command_label_studio(output_file, tmp_path):
    out = tmp_path / "tasks.json"
    result = invoke("export", output_file, "--format", "label-studio", "-o", out, "--local-files-root", tmp_path)
    assert result.exit_code == 0, result.output
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert [t["data"]["post_id"] for t in tasks] == ["p1", "p3"]  # error and skipped records left out
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=images/kawhi.jpg" and tasks[1]["data"]["image"] == ""
    assert "2 posts exported, 2 error/skipped records left out" in result.output
    refused = invoke("export", output_file, "-o", out)
    assert refused.exit_code == 2 and "--force" in refused.output
    assert invoke("export", output_file, "-o", out, "--force", "--limit", "1").exit_code == 0
    assert len(json.loads(out.read_text())) == 1


def test_export_command_conll_round_trips_through_the_reader(output_file, tmp_path):
    out = tmp_path / "out.conll"
    assert invoke("export", output_file, "--format", "conll", "-o", out).exit_code == 0
    sentences = read_conll(out)
    records = [json.loads(line) for line in output_file.read_text().splitlines()]
    assert [s.words for s in sentences] == [[t["text"] for t in r["tokens"]] for r in records if "tokens" in r]
    assert [s.tags for s in sentences] == [r["bio"] for r in records if "bio" in r]
    assert [s.image_id for s in sentences] == ["kawhi", None]
    assert sentences[0].tags[:2] == ["B-PER", "I-PER"]


def test_conll_export_leaves_out_records_the_reader_would_refuse(tmp_path):
    """A hand-edited output with an unknown tag, no words (an empty post with a photo) or tags of another length:
    each such record is left out with a warning, and the written file reads back whole."""
    good = annotated("Obama visits Berlin", (("Obama", "PER", 0.9), ("Berlin", "LOC", 0.8)), (), line=1)
    junk = dict(annotated("Obama visits Berlin", (("Obama", "PER", 0.9),), (), line=2), bio=["X-JUNK", "O", "O"])
    empty = dict(annotated("", (), (), line=3), image="zero.jpg")
    bare = dict(annotated("Obama visits", (), (), line=4), bio=["B-", "O"])
    short = dict(annotated("Obama visits Berlin", (), (), line=5), bio=["O"])
    wnut = dict(annotated("Obama visits Berlin", (), (), line=6), bio=["B-person", "O", "B-OTHER"])
    source = write_jsonl(tmp_path / "edited.jsonl", [good, junk, empty, bare, short, wnut])
    out = tmp_path / "out.conll"
    result = invoke("export", source, "--format", "conll", "-o", out)
    assert result.exit_code == 0, result.output
    for line, why in ((2, "'X-JUNK' is not one"), (3, "no words"), (4, "'B-' is not one"), (5, "one length")):
        assert f"line {line}: " in result.stderr and why in result.stderr
    sentences = read_conll(out)
    assert [s.tags for s in sentences] == [["B-PER", "O", "B-LOC"], ["B-PER", "O", "B-MISC"]]  # lines 1 and 6
    assert "2 posts exported" in result.output


def test_label_config_matches_the_tasks_and_the_model(tiny_bundle):
    result = invoke("export", "--label-config", "-m", tiny_bundle)
    assert result.exit_code == 0, result.output
    root = ET.fromstring(result.output)
    labels = root.find("Labels")
    assert [label.get("value") for label in labels] == ["PER", "LOC", "ORG", "MISC"]
    assert labels.get("name") == "label" and labels.get("toName") == "text"
    assert root.find("Text").get("name") == "text" and root.find("Text").get("value") == "$text"
    assert root.find("Image").get("value") == "$image"
    from mmib_cli.storage.format import read_config

    model_relations = [r for r in read_config(tiny_bundle / "re")["labels"] if r != "None"]
    assert [r.get("value") for r in root.find("Relations")] == model_relations
    hostile = ET.fromstring(label_config(['a"<b>&c']))
    assert hostile.find("Relations")[0].get("value") == 'a"<b>&c'


def test_export_needs_input_and_output():
    assert invoke("export").exit_code == 2
