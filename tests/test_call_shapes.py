"""Reproducibility by construction (issue 24): every call into the model has a shape that depends only on the window
(post, photo) it computes, so no batch mate, chunk, shard, resume or engine can change a bit of a post's record.

These tests pass or fail the same on every machine: they check shapes, not float bits.
"""
from __future__ import annotations

import copy
import random

import pytest

from call_shapes import recorded_calls, shape_violations, windows_ran
from cli_helpers import VOCAB, write_jsonl
from mmib_cli.annotation.forward import (CRF_ROWS, IMAGE_BATCH, LENGTH_BUCKETS, WORD_BUCKETS, WindowRunner, bucket_length,
                                word_bucket)

SEED = 24


def test_bucket_length_is_the_smallest_bucket_that_holds_the_window():
    for cap in (32, 36, 128, 130):
        for n in range(1, cap + 1):
            length = bucket_length(n, cap)
            assert n <= length <= cap
            assert length == cap or length in LENGTH_BUCKETS
            assert not [b for b in LENGTH_BUCKETS if n <= b < length]  # none smaller holds it


def test_word_bucket_is_the_smallest_bucket_or_a_multiple_of_the_last():
    for n in range(1, 2000):
        words = word_bucket(n)
        assert words >= n and (words in WORD_BUCKETS or words % WORD_BUCKETS[-1] == 0)
        assert words - n < max(b for b in WORD_BUCKETS if b <= max(words // 2, WORD_BUCKETS[0])) or words == 8


def _mix(images: dict, n: int, rng: random.Random) -> list[dict]:
    """Short posts, long posts (several windows at max_length 32), photos, given pairs and given entities."""
    photos = [images[k] for k in ("red", "blue", "green", "gray", "alpha")]
    posts = []
    for i in range(n):
        words = rng.randint(33, 70) if rng.random() < 0.2 else rng.randint(1, 14)
        text = " ".join(rng.choice(VOCAB) for _ in range(words))
        post = {"id": f"p{i}", "text": text}
        if rng.random() < 0.5:
            post["image"] = str(rng.choice(photos))
        first, last = text.split(" ")[0], text.split(" ")[-1]
        if words > 1:
            post["pairs"] = [{"head": {"start": 0, "end": len(first)},
                              "tail": {"start": len(text) - len(last), "end": len(text)}}]
            if rng.random() < 0.5:
                post["entities"] = [{"start": 0, "end": len(first), "label": "PER"},
                                    {"start": len(text) - len(last), "end": len(text), "label": "ORG"}]
        posts.append(post)
    return posts


@pytest.fixture(scope="module")
def annotator(tiny_bundle):
    from mmib_cli.annotation.annotator import Annotator

    return Annotator.from_pretrained(str(tiny_bundle), device="cpu")


def _run(annotator, posts, tmp_path, **options):
    from mmib_cli.engines.local import run_pipeline
    from mmib_cli.runs import RunOptions

    src = write_jsonl(tmp_path / "in.jsonl", posts)
    opts = RunOptions(input_path=str(src), output=str(tmp_path / "out.jsonl"), progress=False, online=False,
                      num_workers=0, force=True, **options)
    with recorded_calls(annotator) as calls:
        summary = run_pipeline(opts, annotator=annotator)
    assert summary.exit_code in (0, 3)  # 3: a one-word post gives no pair to classify
    return calls


@pytest.mark.parametrize("command", [
    dict(task="annotate", relations=True),
    dict(task="relations"),  # the pairs each post gives
    dict(task="relations", pair=True),  # every pair of the given entities, or of the entities NER finds
])
def test_every_model_call_has_a_shape_that_depends_only_on_what_it_computes(annotator, sample_images, tmp_path,
                                                                             command):
    rng = random.Random(SEED)
    posts = _mix(sample_images, 40, rng)
    calls = _run(annotator, posts, tmp_path, chunk_size=rng.randint(3, 17), **command)
    parts = {call.part for call in calls}
    assert {"text", "classifier", "image"} <= parts and windows_ran(calls) >= 30
    assert command.get("task") == "relations" and not command.get("pair") or "crf" in parts
    assert shape_violations(calls, annotator) == []


def test_the_shape_check_fails_on_calls_sized_by_their_batch_mates(annotator, sample_images, tmp_path, monkeypatch):
    """The check above is not vacuous: calls that hold only the windows at hand (today's batching) fail it."""
    from mmib_cli.annotation import forward

    real = WindowRunner._call

    def unpadded(self, entries, length):
        with monkeypatch.context() as patch:
            patch.setattr(forward, "rows_per_call", lambda device, length: len(entries))
            return real(self, entries, length)

    monkeypatch.setattr(WindowRunner, "_call", unpadded)
    calls = _run(annotator, _mix(sample_images, 30, random.Random(SEED)), tmp_path, task="annotate", relations=True)
    assert any("text call of" in problem for problem in shape_violations(calls, annotator))


def test_photos_and_crf_run_in_full_fixed_calls(annotator, sample_images, tmp_path):
    posts = _mix(sample_images, 40, random.Random(SEED + 1))
    calls = _run(annotator, posts, tmp_path, task="annotate")
    images = [c for c in calls if c.part == "image"]
    with_photo = sum("image" in p for p in posts)
    assert images and all(c.shape[0] == IMAGE_BATCH for c in images)
    assert len(images) == -(-with_photo // IMAGE_BATCH)  # each photo once, calls filled across chunks' posts
    assert all(c.shape[0] == CRF_ROWS for c in calls if c.part == "crf")


def test_a_partly_filled_bucket_waits_for_the_next_chunk(annotator, sample_images, tmp_path):
    """Across chunks, windows fill calls: a run pays for at most one partly empty call per bucket (plus those a
    full hold forces), not one per bucket and chunk."""
    posts = [p for p in _mix(sample_images, 120, random.Random(SEED + 2))]
    for post in posts:
        post.pop("image", None)
    calls = _run(annotator, copy.deepcopy(posts), tmp_path, task="annotate", chunk_size=5)
    text = [c for c in calls if c.part == "text"]
    partial = [c for c in text if sum(n > 2 for n in c.lengths) < c.shape[0]]
    assert len(partial) <= len({c.shape[1] for c in text})
