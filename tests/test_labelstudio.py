"""Reading Label Studio JSON exports (reviewed corrections) into NER sentences and RE instances."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmib_cli.data.labelstudio import (
    is_label_studio_export,
    read_label_studio,
    split_holdout,
    to_mnre,
    to_sentence,
)
from mmib_cli.errors import DataFormatError

TEXT = "Kawhi Leonard 🚀 joins the Clippers in Los Angeles"


def region(rid: str, surface: str, label: str, text: str = TEXT, *, utf16: bool = False) -> dict:
    start = text.index(surface)
    if utf16:  # offsets as UTF-16 code units (what older Label Studio versions stored after an emoji)
        start = len(text[:start].encode("utf-16-le")) // 2
    return {"id": rid, "from_name": "label", "to_name": "text", "type": "labels",
            "value": {"start": start, "end": start + len(surface), "text": surface, "labels": [label]}}


def relation(head: str, tail: str, label: str | None, direction: str = "right") -> dict:
    return {"type": "relation", "from_id": head, "to_id": tail, "direction": direction,
            "labels": [label] if label else []}


PREDICTED = [region("e0", "Kawhi Leonard", "PER"), region("e1", "Clippers", "LOC"), region("e2", "Los Angeles", "LOC"),
             relation("e0", "e1", "/per/loc/place_of_residence"), relation("e1", "e2", "/loc/loc/contain")]


def task(task_id: int, annotations: list[dict] | None = None, *, predictions: list | None = None,
         text: str = TEXT, image: str = "/data/local-files/?d=images/kawhi.jpg") -> dict:
    """A task as Label Studio's JSON export writes it: predictions by id, the source prediction in the annotation."""
    anns = []
    for i, result in enumerate(annotations or []):
        anns.append({"id": 10 * task_id + i, "result": result, "was_cancelled": False, "ground_truth": False,
                     "updated_at": f"2026-01-0{i + 1}T00:00:00Z",
                     "prediction": {"id": task_id, "result": PREDICTED, "model_version": "m"}})
    return {"id": task_id, "data": {"text": text, "image": image, "post_id": f"p{task_id}"}, "annotations": anns,
            "predictions": predictions if predictions is not None else [task_id]}


def write(path: Path, tasks: list) -> Path:
    path.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    return path


def test_reviewed_annotation_becomes_bio_and_relations(tmp_path):
    corrected = [region("e0", "Kawhi Leonard", "PER"), region("e1", "Clippers", "ORG"),
                 region("e2", "Los Angeles", "LOC"), relation("e1", "e0", "/per/org/member_of", "left")]
    path = write(tmp_path / "export.json", [task(1, [PREDICTED, corrected])])  # the later annotation wins
    (post,), stats = read_label_studio(path)
    assert stats.annotated == 1 and stats.bad_regions == 0 and post.source == "annotation"
    sentence = to_sentence(post)
    assert sentence.words[:4] == ["Kawhi", "Leonard", "🚀", "joins"]
    assert sentence.tags == ["B-PER", "I-PER", "O", "O", "O", "B-ORG", "O", "B-LOC", "I-LOC"]
    assert sentence.image_id == "kawhi"
    instances = {(x.head_name, x.tail_name): x.relation for x in to_mnre(post)}
    # direction "left" swaps the ends; the predicted e1->e2 relation the reviewer removed becomes a None example
    assert instances == {("Kawhi Leonard", "Clippers"): "/per/org/member_of", ("Clippers", "Los Angeles"): "None"}
    member = next(x for x in to_mnre(post) if x.relation != "None")
    assert member.head == (0, 2) and member.tail == (5, 6) and member.image_id == "kawhi.jpg"


def test_a_hand_edited_export_keeps_only_regions_and_relations_training_can_read(tmp_path):
    """Wrong kinds of values in a task never stop the reader, and labels `mmib train` could not read (a label given
    as a string instead of a list, an unknown entity type or relation, `true` as an offset) are left out and
    counted, not written into the corrections where the CoNLL/MNRE readers would refuse the whole run."""
    kawhi, clippers = region("e0", "Kawhi Leonard", "PER"), region("e1", "Clippers", "ORG")
    string_label = dict(region("e2", "Los Angeles", "LOC"), value={**region("e2", "Los Angeles", "LOC")["value"],
                                                                   "labels": "LOC"})
    unknown = region("e3", "joins", "VERB")
    bool_start = dict(region("e4", "Kawhi", "PER"), value={**region("e4", "Kawhi", "PER")["value"], "start": True})
    result = [kawhi, clippers, string_label, unknown, bool_start, 5, {"type": "labels", "value": 5},
              relation("e0", "e1", "/per/org/member_of"), relation("e0", "e1", "/per/org/likes"),
              relation("e1", "e0", "None"), {"type": "relation", "from_id": 5, "to_id": [], "labels": 5}]
    edited = task(1, [result])
    edited["annotations"] += [5, None, {"result": 5, "was_cancelled": "no"}]
    edited["predictions"] = 7
    odd = dict(task(2), annotations=5)
    (post,), stats = read_label_studio(write(tmp_path / "edited.json", [edited, odd]))
    assert [(r.rid, r.label) for r in post.regions] == [("e0", "PER"), ("e1", "ORG")]
    assert post.relations == [("e0", "e1", "/per/org/member_of")]
    assert stats.unlabelled == 1 and stats.bad_regions == 6  # 4 regions, 2 relations
    assert to_sentence(post).tags[:6] == ["B-PER", "I-PER", "O", "O", "O", "B-ORG"]


def test_predictions_only_when_asked_and_cancelled_annotations_ignored(tmp_path):
    own_tasks = {"data": {"text": TEXT}, "predictions": [{"model_version": "m", "result": PREDICTED}]}
    cancelled = task(2, [PREDICTED])
    cancelled["annotations"][0]["was_cancelled"] = True
    path = write(tmp_path / "tasks.json", [own_tasks, cancelled, task(3)])
    posts, stats = read_label_studio(path)
    assert posts == [] and stats.unlabelled == 3
    posts, stats = read_label_studio(path, use_predictions=True)
    assert [p.source for p in posts] == ["prediction"] and stats.from_predictions == 1
    assert stats.unlabelled == 2  # a plain export lists predictions by id only: nothing to fall back on
    assert to_sentence(posts[0]).tags[5] == "B-LOC"


def test_utf16_offsets_are_converted_and_wrong_offsets_dropped(tmp_path):
    bad = region("e2", "Los Angeles", "LOC")
    bad["value"]["start"] += 3
    bad["value"]["end"] += 3
    result = [region("e0", "Kawhi Leonard", "PER"), region("e1", "Clippers", "ORG", utf16=True), bad,
              relation("e0", "e2", "/per/loc/place_of_residence"), relation("e0", "e1", None)]
    (post,), stats = read_label_studio(write(tmp_path / "e.json", [task(1, [result])]))
    assert [(r.start, r.end, r.label) for r in post.regions] == [(0, 13, "PER"), (26, 34, "ORG")]
    assert TEXT[26:34] == "Clippers"
    assert stats.bad_regions == 3  # the shifted region, the relation to it, the unlabelled relation
    assert post.relations == []


def test_holdout_split_is_seeded_and_keeps_a_training_post(tmp_path):
    path = write(tmp_path / "many.json", [task(i, [PREDICTED]) for i in range(1, 21)])
    posts, _ = read_label_studio(path)
    train, held = split_holdout(posts, 0.25, seed=1)
    assert len(held) == 5 and len(train) == 15 and not {p.task for p in train} & {p.task for p in held}
    assert [p.task for p in split_holdout(posts, 0.25, seed=1)[1]] == [p.task for p in held]
    assert [p.task for p in split_holdout(posts, 0.25, seed=2)[1]] != [p.task for p in held]
    assert len(split_holdout(posts[:1], 0.5, seed=0)[0]) == 1
    with pytest.raises(ValueError):
        split_holdout(posts, 1.0, seed=0)


def test_detection_and_malformed_exports(tmp_path, conll_file):
    assert is_label_studio_export(write(tmp_path / "ok.json", [])) and not is_label_studio_export(conll_file)
    (tmp_path / "obj.json").write_text('{"data": {}}')
    with pytest.raises(DataFormatError, match="list of tasks"):
        read_label_studio(tmp_path / "obj.json")
    with pytest.raises(DataFormatError, match="data.text"):
        read_label_studio(write(tmp_path / "notext.json", [{"data": {"image": "x.jpg"}}]))
