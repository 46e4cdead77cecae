"""A post's output is a function of that post alone: batch size, max tokens, chunks, order, shards, --limit, workers
and resuming after SIGKILL never change a byte of its record (issue 14).

The model-level tests compare raw floats (every emission and probability bit), so they fail on any batch
dependence, not only on one that happens to cross a rounding boundary of the 4-decimal scores in the records.
"""
from __future__ import annotations

import copy
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_helpers import VOCAB, invoke, parse_jsonl, subprocess_env, write_jsonl
from mmib_cli.features import Window
from mmib_cli.inference import (LENGTH_STEP, MIN_PADDED_LENGTH, ROW_ALIGN, RowAlignedLinear, batch_length,
                                length_batches, padded_length, predict_re)

TRIALS = 6


# -- shapes ----------------------------------------------------------------------------------------------------------
def test_padded_length_depends_only_on_the_window():
    for cap in (32, 128, 130):
        for n in range(1, cap + 1):
            length = padded_length(n, cap)
            assert n <= length <= cap
            assert length == n or length % LENGTH_STEP == 0 or length == cap
            assert length >= min(MIN_PADDED_LENGTH, cap)
            assert length > n or n == cap or (n // LENGTH_STEP + 1) * LENGTH_STEP > cap


@pytest.mark.parametrize("batch_size,max_tokens", [(1, 8192), (3, 8192), (32, 100), (32, 8192), (7, 10)])
@pytest.mark.parametrize("cap", [32, 36])
def test_length_batches_pad_each_row_only_where_it_gives_the_same_bits(batch_size, max_tokens, cap):
    """Rows share a batch only if each is padded (to a multiple of 8) or all have one length; limits are kept."""
    rng = random.Random(batch_size * 1000 + max_tokens + cap)
    windows = [Window([0] * rng.randint(2, cap), []) for _ in range(200)]
    batches = length_batches(windows, batch_size, max_tokens, cap)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for batch in batches:
        lengths = [len(windows[i].input_ids) for i in batch]
        padded_to = batch_length([windows[i] for i in batch], cap)
        assert padded_to == max(padded_length(n, cap) for n in lengths)
        if len(set(lengths)) > 1:  # mixed lengths: every row is padded, to a multiple of LENGTH_STEP
            assert padded_to % LENGTH_STEP == 0
            assert all(padded_length(n, cap) > n and padded_length(n, cap) % LENGTH_STEP == 0 for n in lengths)
        assert len(batch) <= batch_size and (len(batch) == 1 or len(batch) * padded_to <= max_tokens)
        assert lengths == sorted(lengths)
        for n in set(lengths):  # one length's windows keep their input order
            same = [i for i in batch if len(windows[i].input_ids) == n]
            assert same == sorted(same)


def test_a_default_model_row_gives_the_same_bits_at_every_padding_it_may_get():
    """The real MiniLM default: a window padded to its own length == padded further, with longer batch mates."""
    from mmib_cli.annotate import Annotator
    from mmib_cli.inference import _to

    loaded = Annotator.from_pretrained("mmib-default", device="cpu").ner
    model, featurizer = loaded.model, loaded.featurizer
    rng = random.Random(7)
    words = [w for w in VOCAB if w.strip()]
    posts = [[rng.choice(words) for _ in range(k)] for k in (1, 3, 6, 9, 14, 20, 28, 37, 50, 70, 95)]
    windows = [w for ws in featurizer.encode_ner(posts) for w in ws]
    cap = featurizer.max_length

    def emissions(rows, length):
        with torch.inference_mode():
            return model(**_to(featurizer.collate(rows, "ner", length=length), torch.device("cpu"))).logits

    checked = 0
    for w in windows:
        n = len(w.input_ids)
        if not padded_length(n, cap) > n:
            continue
        own = emissions([w, w], padded_length(n, cap))[0, : len(w.word_index)]
        longer = [x for x in windows if padded_length(len(x.input_ids), cap) > padded_length(n, cap)]
        for mate in rng.sample(longer, min(2, len(longer))):
            length = padded_length(len(mate.input_ids), cap)
            got = emissions([mate, w, mate], length)[1, : len(w.word_index)]
            assert torch.equal(got, own), (n, length)
            checked += 1
    assert checked >= 12


@pytest.mark.parametrize("threads", [1, 2])
def test_row_aligned_linear_rows_do_not_depend_on_the_row_count(threads):
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 23)
    layer.__class__ = RowAlignedLinear
    probe = torch.randn(32)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            want = layer(probe[None])[0]
            for rows in range(1, 3 * ROW_ALIGN * 4):
                batch = torch.randn(rows, 32)
                at = rows // 2
                batch[at] = probe
                assert torch.equal(layer(batch)[at], want), rows
                assert torch.equal(layer(batch[None])[0, at], want), rows  # 3-d input
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", [1, 2])
def test_image_features_do_not_depend_on_the_other_images(threads):
    from mmib_cli.encoders import build_image_backbone
    from mmib_cli.inference import IMAGE_BATCH, FixedImageBatches

    backbone, info = build_image_backbone({"source": "tiny-cnn"})
    wrapped = FixedImageBatches(backbone.eval())
    torch.manual_seed(0)
    probe = torch.randn(3, info.image_size, info.image_size)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            want = wrapped(probe[None])[0]
            for count in range(1, 3 * IMAGE_BATCH + 2):
                images = torch.randn(count, *probe.shape)
                at = (count * 5) // 3 % count
                images[at] = probe
                out = wrapped(images)
                assert out.shape[0] == count and torch.equal(out[at], want), count
    finally:
        torch.set_num_threads(previous)


# -- posts -----------------------------------------------------------------------------------------------------------
def _posts(images: dict[str, Path], n: int, seed: int, long_words: tuple[int, int] = (40, 90),
           long_share: float = 0.25) -> list[dict]:
    """Short and long posts (long ones need several windows at max_length 32), half of them with a photo.

    The tiny random models tag most words as entities, so relation runs use fewer and shorter long posts (the
    pairs grow with the square of the entities).
    """
    rng = random.Random(seed)
    photos = [images[k] for k in ("red", "blue", "green", "gray", "alpha")]
    posts = []
    for i in range(n):
        words = rng.randint(*long_words) if rng.random() < long_share else rng.randint(1, 12)
        post = {"id": f"p{i}", "text": " ".join(rng.choice(VOCAB) for _ in range(words))}
        if rng.random() < 0.5:
            post["image"] = str(rng.choice(photos))
        posts.append(post)
    return posts


@pytest.fixture(scope="module")
def bundle_annotator(tiny_bundle):
    from mmib_cli.annotate import Annotator

    return Annotator.from_pretrained(str(tiny_bundle), device="cpu")


@pytest.fixture(scope="module")
def mixed_posts(sample_images) -> list[dict]:
    return _posts(sample_images, 24, seed=14)


@pytest.fixture(scope="module")
def relation_posts(sample_images) -> list[dict]:
    return _posts(sample_images, 16, seed=41, long_words=(33, 40), long_share=0.15)


def _prepared(annotator, posts):
    from mmib_cli.annotate import prepare

    settings = annotator.prepare_settings()
    return [prepare(i + 1, post, settings) for i, post in enumerate(posts)]


def _ner_raw(annotator, prepared, batch_size: int, max_tokens: int) -> list[tuple]:
    """(tags, tag scores) per post, predicted with these posts as batch mates."""
    saved = annotator.batch_size, annotator.max_tokens
    annotator.batch_size, annotator.max_tokens = batch_size, max_tokens
    try:
        return [(p.tags, p.tag_scores) for p in annotator._ner_predictions(prepared)]
    finally:
        annotator.batch_size, annotator.max_tokens = saved


def _re_raw(annotator, prepared, batch_size: int, max_tokens: int) -> list[list[bytes]]:
    """Relation probabilities (raw float bytes) of a fixed set of pairs per post."""
    loaded = annotator.re
    items, owners = [], []
    for k, p in enumerate(prepared):
        n = len(p.tokens)
        for head, tail in ((0, n - 1), (n - 1, 0), (n // 2, 0)):
            if head != tail:
                items.append(([t.text for t in p.tokens], (head, head + 1), (tail, tail + 1)))
                owners.append(k)
    windows = loaded.featurizer.encode_re_batch(items)
    for w, k in zip(windows, owners):
        w.post = k
    pixels, present = annotator._pixels(prepared, loaded)
    probs = predict_re(loaded, windows, batch_size=batch_size, max_tokens=max_tokens, pixel_values=pixels,
                       image_present=present)
    out: list[list[bytes]] = [[] for _ in prepared]
    for k, row in zip(owners, probs):
        out[k].append(row.numpy().tobytes())
    return out


def test_each_photo_goes_through_the_backbone_once_per_chunk_in_full_calls(bundle_annotator, mixed_posts):
    """Photos are encoded once per post (not per window or batch), in calls of exactly IMAGE_BATCH images."""
    from mmib_cli.inference import IMAGE_BATCH, FixedImageBatches

    model = bundle_annotator.ner.model
    wrapper = model.image_backbone
    assert isinstance(wrapper, FixedImageBatches)
    calls: list[int] = []
    inner = wrapper.backbone
    hook = inner.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        prepared = _prepared(bundle_annotator, mixed_posts)
        _ner_raw(bundle_annotator, prepared, 3, 8192)  # batches of 3 rows: many more batches than calls
    finally:
        hook.remove()
    photos = sum(p.pixels is not None for p in prepared)
    assert set(calls) == {IMAGE_BATCH} and len(calls) == -(-photos // IMAGE_BATCH), (calls, photos)


def test_only_photos_of_posts_with_windows_are_encoded(bundle_annotator, mixed_posts):
    """A post no window reads (e.g. no entity pair for relations) costs no backbone work."""
    from mmib_cli.inference import post_visual_tokens

    loaded = bundle_annotator.re
    prepared = _prepared(bundle_annotator, mixed_posts)
    pixels, present = bundle_annotator._pixels(prepared, loaded)
    read = [k for k in range(len(prepared)) if present[k]][:3]
    windows = [Window([0, 1, 2], [], post=k) for k in read]
    seen: list[int] = []
    hook = loaded.model.image_backbone.backbone.register_forward_pre_hook(
        lambda module, args: seen.append(int((args[0].flatten(1).abs().sum(1) > 0).sum())))
    try:
        tokens = post_visual_tokens(loaded.model, windows, pixels, present, torch.device("cpu"))
        assert post_visual_tokens(loaded.model, [], pixels, present, torch.device("cpu")) is None
    finally:
        hook.remove()
    assert sum(seen) == len(read) < int(present.sum())  # blank padding images aside
    assert [bool(tokens[k].any()) for k in range(len(prepared))] == [k in read for k in range(len(prepared))]


@pytest.mark.parametrize("task", ["ner", "re"])
def test_model_outputs_are_bit_identical_whatever_the_batch_mates(task, bundle_annotator, mixed_posts):
    """Every float of a post's prediction alone equals the one in random mixes, orders, batch sizes, max tokens."""
    raw = _ner_raw if task == "ner" else _re_raw
    prepared = _prepared(bundle_annotator, mixed_posts)
    assert any(len(p.tokens) > 40 for p in prepared) and any(p.pixels is not None for p in prepared)
    alone = [raw(bundle_annotator, [p], 32, 8192)[0] for p in prepared]
    rng = random.Random(task)
    for _ in range(TRIALS):
        order = rng.sample(range(len(prepared)), rng.randint(2, len(prepared)))
        batch_size, max_tokens = rng.choice([1, 2, 3, 5, 8, 32]), rng.choice([40, 100, 300, 8192])
        got = raw(bundle_annotator, [prepared[i] for i in order], batch_size, max_tokens)
        for i, result in zip(order, got):
            assert result == alone[i], (i, batch_size, max_tokens)


def _record_bytes(record: dict) -> str:
    record = dict(record)
    record.pop("line", None)  # the input line number: the only field that depends on where the post sits
    return json.dumps(record, ensure_ascii=False)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["annotate+relations", "relations-given-pairs", "relations-pair"])
def test_records_are_byte_identical_whatever_the_batching(mode, bundle_annotator, relation_posts):
    """Library API: each record alone == the same post's record in random orders, chunks, batch sizes."""
    from mmib_cli.annotate import RelationSettings

    posts = copy.deepcopy(relation_posts)
    assert any(len(p["text"].split()) > 32 for p in posts) and any("image" in p for p in posts)
    for post in posts:
        words = post["text"].split(" ")
        if mode == "relations-given-pairs" and len(words) > 1:
            post["pairs"] = [{"head": {"start": 0, "end": len(words[0])},
                              "tail": {"start": len(post["text"]) - len(words[-1]), "end": len(post["text"])}}]
        elif mode == "relations-pair":
            post["entities"] = [{"text": words[0], "label": "PER", "start": 0, "end": len(words[0])}]
            if len(words) > 1:
                post["entities"].append({"text": words[-1], "label": "ORG",
                                         "start": len(post["text"]) - len(words[-1]), "end": len(post["text"])})

    def run(batch, chunk_size):
        if mode == "annotate+relations":
            return list(bundle_annotator.annotate(batch, relations=True, chunk_size=chunk_size))
        settings = RelationSettings(pair=mode == "relations-pair", keep_none=True)
        return list(bundle_annotator.relations(batch, relation_settings=settings, chunk_size=chunk_size))

    saved = bundle_annotator.batch_size, bundle_annotator.max_tokens
    try:
        alone = [_record_bytes(run([post], 1)[0]) for post in posts]
        assert any('"relations": [{' in r for r in alone)
        rng = random.Random(mode)
        for _ in range(2):
            order = rng.sample(range(len(posts)), len(posts))
            bundle_annotator.batch_size = rng.choice([1, 2, 3, 8, 32])
            bundle_annotator.max_tokens = rng.choice([40, 300, 8192])
            got = run([posts[i] for i in order], rng.randint(1, len(posts)))
            assert [_record_bytes(r) for r in got] == [alone[i] for i in order]
    finally:
        bundle_annotator.batch_size, bundle_annotator.max_tokens = saved


# -- the command line ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_input(sample_images, tmp_path_factory) -> Path:
    posts = _posts(sample_images, 48, seed=140, long_words=(33, 40), long_share=0.1)
    posts[7] = "{not json"
    return write_jsonl(tmp_path_factory.mktemp("invariance") / "in.jsonl", posts)


@pytest.fixture(scope="module")
def cli_reference(cli_input, tiny_bundle, tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("reference") / "out.jsonl"
    result = invoke("annotate", cli_input, "-o", out, "-m", tiny_bundle, "--relations", "--num-workers", "0")
    assert result.exit_code == 3, result.output  # the malformed line
    return out.read_bytes()


def _by_line(data: bytes) -> dict[int, bytes]:
    return {json.loads(raw)["line"]: raw for raw in data.splitlines(keepends=True)}


@pytest.mark.slow
def test_shards_batch_sizes_and_limit_give_the_same_lines(cli_input, cli_reference, tiny_bundle, tmp_path):
    reference = _by_line(cli_reference)
    union: dict[int, bytes] = {}
    for index, (batch, tokens) in enumerate([("1", "64"), ("5", "8192"), ("32", "300")], 1):
        out = tmp_path / f"shard{index}.jsonl"
        result = invoke("annotate", cli_input, "-o", out, "-m", tiny_bundle, "--relations", "--shard", f"{index}/3",
                        "-b", batch, "--max-tokens", tokens, "--num-workers", str(index % 2))
        assert result.exit_code in (0, 3), result.output
        union.update(_by_line(out.read_bytes()))
    assert union == reference  # byte-identical lines, each exactly once
    out = tmp_path / "limited.jsonl"
    result = invoke("annotate", cli_input, "-o", out, "-m", tiny_bundle, "--relations", "--limit", "23", "-b", "3",
                    "--num-workers", "0")
    assert result.exit_code == 3, result.output
    assert out.read_bytes().splitlines() == cli_reference.splitlines()[:23]


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_output(cli_input, cli_reference, tiny_bundle,
                                                                              tmp_path):
    """Killed twice (after a random number of lines, with different batch sizes), then resumed to the end."""
    out = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    rng = random.Random(int(time.time()))
    for batch in ("2", "7"):
        args = [sys.executable, "-m", "mmib_cli", "annotate", str(cli_input), "-o", str(out), "-m", str(tiny_bundle),
                "--relations", "-b", batch, "--num-workers", "0", "--no-progress"]
        if partial.exists():
            args.append("--resume")
        start = partial.read_bytes().count(b"\n") if partial.exists() else 0
        stop = start + rng.randint(1, 15)
        proc = subprocess.Popen(args, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None:
                if partial.exists() and partial.read_bytes().count(b"\n") >= stop:
                    break
                time.sleep(0.01)
            assert proc.poll() is None, f"the run ended before line {stop}: {proc.stderr.read().decode()}"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stderr.close()
        assert not out.exists()
    result = invoke("annotate", cli_input, "-o", out, "-m", tiny_bundle, "--relations", "-b", "4", "--resume",
                    "--num-workers", "0")
    assert result.exit_code in (0, 3), result.output  # 3 only if the malformed line was left for this run
    assert out.read_bytes() == cli_reference


@pytest.mark.slow
def test_ray_gives_the_local_lines(cli_input, cli_reference, tiny_bundle, tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from mmib_cli.distributed import RayOptions, run_ray
    from mmib_cli.runs import RunOptions

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    shards = tmp_path / "shards"
    try:
        run_ray(RunOptions(task="annotate", input_path=str(cli_input), output=str(shards), engine="ray",
                           model=str(tiny_bundle), relations=True, batch_size=3, progress=False, online=False),
                RayOptions(concurrency=1))  # one actor: a second would leave no CPU for the read task
    finally:
        ray.shutdown()
    lines: dict[int, bytes] = {}
    for part in sorted(shards.glob("part-*.jsonl")):
        lines.update(_by_line(part.read_bytes()))
    assert lines == _by_line(cli_reference)
    assert parse_jsonl(b"".join(lines[k] for k in sorted(lines))) == parse_jsonl(cli_reference)
