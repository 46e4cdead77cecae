"""Throughput of `mmib annotate` end to end against the pure-forward bound, default vs paper-size model.

For each model configuration, in one process and on the same loaded model object:

* **pipeline**: `run_pipeline(RunOptions(task="annotate", ...), annotator=...)` - the exact code path of `mmib annotate`
  (JSONL read, validation, word split, image decode in DataLoader workers, featurisation, batched forward, CRF
  decode, entities, JSON write) on N synthetic posts, half of them with a generated JPEG photo. The model is loaded
  once beforehand (its load time is reported separately) so posts/s is the steady-state rate.
* **bound**: the same model's `forward` alone on the same posts, already tokenised, collated into the same batches
  (same chunking, length sorting and batch size), images already decoded, every tensor already on the device.

Runs come in adjacent (bound, pipeline) pairs, alternating which goes first; the reported ratio is the median of
the `--repeat` pair ratios, so a noisy machine hurts both sides of a ratio alike. Ratios are the result; absolute times depend on the machine.

Example:
    python benchmarks/throughput.py --posts 1000 --paper-posts 200
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SRC, build_checkpoint, facts_line, hardware, make_photos, make_posts, table  # noqa: E402

CACHE = Path.home() / ".cache" / "mmib-bench"


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pipeline_chunks(annotator: Any, posts_path: Path, args: argparse.Namespace) -> Iterator[list]:
    """The prepared chunks the pipeline cuts from `posts_path` (its own chunking code, in this process)."""
    from mmib_cli.engines import local as pipeline
    from mmib_cli.runs import RunOptions

    opts = RunOptions(task="annotate", input_path=str(posts_path), output="-", batch_size=args.batch_size,
                      chunk_size=args.chunk_size)
    settings = annotator.prepare_settings(**opts.prepare_fields())
    return (chunk for chunk, _digests in pipeline._ChunkSource(opts, settings, opts.chunk_rule))


def prepared_batches(annotator: Any, posts_path: Path, args: argparse.Namespace) -> tuple[list[dict], int, int]:
    """Every forward call the pipeline makes on `posts_path`, as device tensors: its photos in calls of
    `IMAGE_BATCH` (their visual tokens go into the text calls) and its windows in full fixed-shape calls per length
    bucket (as windows carried across chunks fill them); also posts and chunks."""
    import torch

    from mmib_cli.annotation import forward as inference
    from mmib_cli.annotation.annotator import Prepared
    from mmib_cli.io.images import normalize_pixels

    loaded = annotator.ner
    device, featurizer = annotator.device, loaded.featurizer
    buckets: dict[int, list] = {}
    count = chunks = 0
    for chunk in pipeline_chunks(annotator, posts_path, args):
        count, chunks = count + len(chunk), chunks + 1
        posts = [p for p in chunk if isinstance(p, Prepared)]
        photos = [normalize_pixels(p.pixels, mean=loaded.image_info.mean, std=loaded.image_info.std)
                  if p.pixels is not None and loaded.image_info is not None else None for p in posts]
        visual = inference.encode_photos(loaded.model, photos)
        for windows, image in zip(featurizer.encode_ner([[t.text for t in p.tokens] for p in posts]), visual):
            for w in windows:
                buckets.setdefault(inference.bucket_length(len(w.input_ids), featurizer.max_length), []).append(
                    (w, image))
    filler = inference.WindowRunner(loaded.model, featurizer, "ner").filler
    batches: list[dict] = []
    for length, members in sorted(buckets.items()):
        rows = inference.rows_per_call(device, length)
        for start in range(0, len(members), rows):
            part = members[start: start + rows]
            windows = [w for w, _ in part] + [filler] * (rows - len(part))
            batch = featurizer.collate(windows, "ner", length=length, words=length)
            batch.pop("labels", None)
            if loaded.model.uses_images:
                tokens = loaded.model.no_image_tokens.new_zeros((rows, *loaded.model.no_image_tokens.shape))
                present = torch.zeros(rows, dtype=torch.bool)
                for i, (_, image) in enumerate(part):
                    if image is not None:
                        tokens[i], present[i] = image, True
                batch.update(image_tokens=tokens, image_present=present)
            batches.append({k: v.to(device) for k, v in batch.items()})
    return batches, count, chunks


def time_bound(model: Any, batches: list[dict], device: Any) -> float:
    """Seconds of `model(**batch)` over every batch (inference mode, synchronised)."""
    import torch

    with torch.inference_mode():
        _sync(device)
        start = time.perf_counter()
        for batch in batches:
            model(**batch).logits
        _sync(device)
        return time.perf_counter() - start


def chunk_size(args: argparse.Namespace) -> int:
    """Posts per pipeline chunk (the bound's batches are cut from chunks of the same size)."""
    from mmib_cli.runs.plan import CHUNK_BATCHES

    return args.chunk_size or CHUNK_BATCHES * args.batch_size


def time_pipeline(annotator: Any, posts_path: Path, out_dir: Path, args: argparse.Namespace,
                  profile: Path | None = None, workers: int | None = None, threads: int | None = None,
                  chunk: int | None = None) -> float:
    """Seconds of `run_pipeline` (the `mmib annotate` code path) with the model already loaded."""
    import torch

    from mmib_cli.runs import RunOptions

    import importlib

    try:  # a --baseline-src tree from before mmib_cli/engines/ (tried first: an editable install of this tree would
        run_pipeline = importlib.import_module("mmib_cli" + ".pipeline").run_pipeline  # lend it engines/ from here)
    except ImportError:
        from mmib_cli.engines.local import run_pipeline

    opts = RunOptions(task="annotate", input_path=str(posts_path), output=str(out_dir / "out.jsonl"),
                           model="preloaded", batch_size=args.batch_size, device=args.device,
                           num_workers=args.num_workers if workers is None else workers, progress=False, force=True,
                           chunk_size=args.chunk_size if chunk is None else chunk)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    profiler = None
    if profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.002)
        profiler.start()
    start = time.perf_counter()
    summary = run_pipeline(opts, annotator=annotator)
    seconds = time.perf_counter() - start
    if profiler is not None:
        profiler.stop()
        profile.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    torch.set_num_threads(previous_threads)
    if summary.annotated != summary.posts:
        raise RuntimeError(f"pipeline run annotated {summary.annotated} of {summary.posts} posts: {summary.line()}")
    return seconds


def load_annotator(ckpt: Path, args: argparse.Namespace, *, optimized: bool = True) -> Any:
    """The annotator `mmib annotate` would load; `optimized=False` skips `optimize_for_inference` (the "before")."""
    from unittest import mock

    from mmib_cli import Annotator

    def load() -> Any:
        return Annotator.from_pretrained(str(ckpt), device=args.device, dtype=args.dtype)

    if optimized:
        return load()
    from mmib_cli.checkpoint import optimize

    with mock.patch.object(optimize, "optimize_for_inference", lambda loaded: None):  # imported when loading
        return load()


def baseline_cost(kind: str, posts: Path, args: argparse.Namespace) -> dict[str, Any]:
    """This tree's pipeline against the one in `--baseline-src` (e.g. a checkout of the previous release), in
    alternated adjacent subprocess runs on the same posts, checkpoint and settings; each subprocess loads its own
    code and model, warms up with one run, then times `run_pipeline` once."""
    import subprocess

    runs = []
    for r in range(args.repeat):
        pair = {}
        for which in (("baseline", "current") if r % 2 == 0 else ("current", "baseline")):
            env = {**os.environ, "MMIB_BENCH_SRC": str(Path(args.baseline_src).resolve() if which == "baseline"
                                                       else ROOT)}
            cmd = [sys.executable, str(Path(__file__).resolve()), "--time-pipeline", str(posts), "--model-kind",
                   kind, "-b", str(args.batch_size), "--device", args.device, "--dtype", args.dtype,
                   "--encoder-tuning", args.encoder_tuning]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{which} run failed: {done.stderr[-2000:]}")
            pair[which] = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
        runs.append(pair)
    med = statistics.median
    return {"baseline_s": med(r["baseline"] for r in runs), "current_s": med(r["current"] for r in runs),
            "slowdown": med(r["current"] / r["baseline"] for r in runs), "runs": runs}


def time_pipeline_once(posts: Path, args: argparse.Namespace) -> None:
    """`--time-pipeline`: one warm-up and one timed `run_pipeline` of the code on `sys.path`; prints JSON."""
    ckpt = CACHE / f"{args.model_kind}-ner-{args.encoder_tuning.replace(':', '')}"  # built by the parent run
    annotator = load_annotator(ckpt, args)
    with tempfile.TemporaryDirectory(prefix="mmib-bench-") as tmp:
        time_pipeline(annotator, posts, Path(tmp), args)
        seconds = time_pipeline(annotator, posts, Path(tmp), args)
    print(json.dumps({"seconds": seconds, "src": str(SRC)}))


def before_after(annotator: Any, ckpt: Path, posts: Path, batches: list[dict], work: Path,
                 args: argparse.Namespace) -> dict[str, Any]:
    """The current pipeline against the code's earlier defaults, in alternated adjacent runs.

    Before = no `optimize_for_inference` (LoRA not merged, BatchNorm not folded, NCHW convolutions), fixed chunks
    of 4 batches, 1 worker process on CPU (2 on GPU). Also the forward alone (bound batches) of both models.
    """
    baseline = load_annotator(ckpt, args, optimized=False)
    old_workers = 2 if annotator.device.type == "cuda" else 1
    device = annotator.device
    runs = []
    for r in range(args.repeat):
        pair = []
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            if which == 0:
                pair.append(("before", time_bound(baseline.ner.model, batches, device),
                             time_pipeline(baseline, posts, work, args, workers=old_workers,
                                           chunk=4 * args.batch_size)))
            else:
                pair.append(("after", time_bound(annotator.ner.model, batches, device),
                             time_pipeline(annotator, posts, work, args)))
        timings = dict((name, (f, p)) for name, f, p in pair)
        runs.append(timings)
    del baseline
    med = statistics.median
    return {"forward_before_s": med(r["before"][0] for r in runs), "forward_after_s": med(r["after"][0] for r in runs),
            "pipeline_before_s": med(r["before"][1] for r in runs),
            "pipeline_after_s": med(r["after"][1] for r in runs),
            "forward_speedup": med(r["before"][0] / r["after"][0] for r in runs),
            "pipeline_speedup": med(r["before"][1] / r["after"][1] for r in runs), "old_workers": old_workers,
            "runs": runs}


def measure(kind: str, n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Load the `kind` model and time bound and pipeline on `n` posts (medians of `args.repeat` pairs)."""
    import torch

    ckpt = build_checkpoint(CACHE / f"{kind}-ner-{args.encoder_tuning.replace(':', '')}", kind,
                            encoder_tuning=args.encoder_tuning)
    posts = make_posts(work / f"posts-{n}.jsonl", n, image_fraction=args.image_fraction,
                       photos=[f"photos/{p}" for p in make_photos(work / "photos", 24)])
    start = time.perf_counter()
    annotator = load_annotator(ckpt, args)
    load_s = time.perf_counter() - start
    batches, count, chunks = prepared_batches(annotator, posts, args)
    model, device = annotator.ner.model, annotator.device
    pieces = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["attention_mask"].numel() for b in batches)
    images = sum(int(b["image_present"].sum()) for b in batches if "image_present" in b)
    time_bound(model, batches[: max(1, len(batches) // 10)], device)  # warm-up (allocator, kernels)

    def paired(workers: int | None = None, threads: int | None = None, profile: Path | None = None) -> dict:
        """`--repeat` adjacent (bound, pipeline) pairs, alternating which runs first; median of the pair ratios."""
        runs = []
        for r in range(args.repeat):
            first_bound = r % 2 == 0
            b = time_bound(model, batches, device) if first_bound else None
            p = time_pipeline(annotator, posts, work, args, profile if r == 0 else None, workers, threads)
            b = b if first_bound else time_bound(model, batches, device)
            runs.append((b, p))
        return {"bound_s": statistics.median(b for b, _ in runs), "pipeline_s": statistics.median(p for _, p in runs),
                "ratio": statistics.median(b / p for b, p in runs), "runs": runs}

    profile = Path(args.profile).with_suffix(f".{kind}.txt") if args.profile else None
    main_runs = paired(profile=profile)
    before = before_after(annotator, ckpt, posts, batches, work, args) if args.before else None
    invariance = baseline_cost(kind, posts, args) if args.baseline_src else None
    sweep = []
    if args.sweep and kind == "default":
        for threads, workers in args.sweep:
            sweep.append({"threads": threads, "workers": workers, **paired(workers, threads)})
    result = {"model": kind, "posts": count, "windows_images": images, "pieces": pieces, "padded_pieces": padded,
              "load_s": load_s, "bound_posts_s": count / main_runs["bound_s"],
              "pipeline_posts_s": count / main_runs["pipeline_s"], "ratio": main_runs["ratio"],
              "runs": main_runs["runs"],
              "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
              "chunk": chunk_size(args), "chunks": chunks, "sweep": sweep, "before": before,
              "invariance": invariance}
    return result


def _sweep(value: str) -> list[tuple[int, int]]:
    return [(int(t), int(w)) for t, w in (item.split(":") for item in value.split(","))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=1000, help="posts for the default model (default 1000)")
    parser.add_argument("--paper-posts", type=int, default=None,
                        help="posts for the paper-size model (default: --posts / 4; 0 skips it)")
    parser.add_argument("-b", "--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    parser.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16/fp16 on CUDA), float32, ...")
    parser.add_argument("--num-workers", type=int, default=None, help="pipeline workers (default: pipeline's)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--chunk-size", type=int, default=0, help="posts per pipeline chunk (default: pipeline's)")
    parser.add_argument("--sweep", type=_sweep, default=None, metavar="T:W,...",
                        help="also time the pipeline (default model) at these torch threads : workers settings, "
                             "e.g. 2:0,2:1,2:2,1:1 (each against its own bound run)")
    parser.add_argument("--image-fraction", type=float, default=0.5)
    parser.add_argument("--encoder-tuning", default="lora:16",
                        help="text-encoder tuning of the benchmark checkpoints (the default model uses lora:16)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="adjacent (bound, pipeline) pairs per setting; medians are reported (default 3)")
    parser.add_argument("--profile", default=None, help="write a pyinstrument profile of the first pipeline run "
                                                        "to PROFILE.<model>.txt")
    parser.add_argument("--before", action="store_true",
                        help="also time the earlier defaults (no optimize_for_inference, 4-batch chunks, 1 CPU "
                             "worker) against the current code, alternated in the same run")
    parser.add_argument("--baseline-src", default=None, metavar="DIR",
                        help="also time the pipeline of another source tree (e.g. `git worktree add ../base v0.x`) "
                             "against this one, in alternated subprocess runs (same posts and checkpoint)")
    parser.add_argument("--time-pipeline", default=None, help=argparse.SUPPRESS)  # internal: --baseline-src runs
    parser.add_argument("--model-kind", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.time_pipeline:
        time_pipeline_once(Path(args.time_pipeline), args)
        return 0
    paper_n = args.posts // 4 if args.paper_posts is None else args.paper_posts
    results = []
    with tempfile.TemporaryDirectory(prefix="mmib-bench-") as tmp:
        work = Path(tmp)
        results.append(measure("default", args.posts, args, work))
        if paper_n:
            results.append(measure("paper", paper_n, args, work))
    facts = hardware(args.device)
    print(f"# mmib annotate throughput ({facts_line(facts)})")
    if SRC != ROOT:
        print(f"code under test: {SRC}")
    print(f"batch size {args.batch_size}, chunks of up to {results[0]['chunk']} posts "
          f"({results[0]['posts'] / results[0]['chunks']:.0f} on average), device {args.device}, workers "
          f"{args.num_workers if args.num_workers is not None else 'pipeline default'}, "
          f"images on {args.image_fraction:.0%} of posts; medians of {args.repeat} adjacent (bound, pipeline) "
          "pairs\n")
    rows = [(r["model"], r["dtype"], r["posts"], r["threads"], f"{r['pieces'] / r['padded_pieces']:.2f}",
             f"{r['bound_posts_s']:.1f}", f"{r['pipeline_posts_s']:.1f}", f"{r['ratio']:.2f}", f"{r['load_s']:.1f}")
            for r in results]
    print(table(["model", "dtype", "posts", "threads", "pieces/padded", "bound posts/s", "pipeline posts/s",
                 "pipeline/bound", "load s"], rows))
    if len(results) == 2:
        d, p = results
        print(f"\ndefault vs paper-size: pipeline {d['pipeline_posts_s'] / p['pipeline_posts_s']:.1f}x, "
              f"bound {d['bound_posts_s'] / p['bound_posts_s']:.1f}x faster")
    print(f"\ngoal pipeline/bound >= 0.85: "
          f"{'met' if results[0]['ratio'] >= 0.85 else 'NOT met'} ({results[0]['ratio']:.2f}, default model)")
    if any(r["before"] for r in results):
        print("\n## before / after the optimisations (same run, alternated; medians)\n")
        print("before = no optimize_for_inference (LoRA unmerged, BatchNorm unfolded, NCHW convolutions), fixed "
              f"chunks of {4 * args.batch_size} posts, {results[0]['before']['old_workers']} worker process(es)\n")
        print(table(["model", "forward posts/s before", "after", "speedup", "pipeline posts/s before", "after",
                     "speedup"],
                    [(r["model"], f"{r['posts'] / r['before']['forward_before_s']:.1f}",
                      f"{r['posts'] / r['before']['forward_after_s']:.1f}", f"{r['before']['forward_speedup']:.2f}x",
                      f"{r['posts'] / r['before']['pipeline_before_s']:.1f}",
                      f"{r['posts'] / r['before']['pipeline_after_s']:.1f}",
                      f"{r['before']['pipeline_speedup']:.2f}x") for r in results if r["before"]]))
    if any(r["invariance"] for r in results):
        print(f"\n## this tree vs --baseline-src {args.baseline_src} (same run, alternated subprocesses; medians)\n")
        print(table(["model", "pipeline posts/s baseline", "this tree", "this/baseline time", "pairs (s)"],
                    [(r["model"], f"{r['posts'] / r['invariance']['baseline_s']:.1f}",
                      f"{r['posts'] / r['invariance']['current_s']:.1f}", f"{r['invariance']['slowdown']:.3f}",
                      ", ".join(f"{p['baseline']:.1f}/{p['current']:.1f}" for p in r["invariance"]["runs"]))
                     for r in results if r["invariance"]]))
    if results[0]["sweep"]:
        bound_threads = results[0]["threads"]
        print(f"\n## torch threads x pipeline workers (default model; bound at {bound_threads} threads)\n")
        print(table(["torch threads", "workers", "bound posts/s", "pipeline posts/s", "pipeline/bound"],
                    [(r["threads"], r["workers"], f"{results[0]['posts'] / r['bound_s']:.1f}",
                      f"{results[0]['posts'] / r['pipeline_s']:.1f}", f"{r['ratio']:.2f}")
                     for r in results[0]["sweep"]]))
    print("seconds per run [(bound, pipeline), ...]: "
          + "; ".join(f"{r['model']}: " + ", ".join(f"({b:.1f}, {p:.1f})" for b, p in r["runs"]) for r in results))
    if args.json:
        Path(args.json).write_text(json.dumps({"facts": facts, "args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
