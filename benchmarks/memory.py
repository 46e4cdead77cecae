"""Peak memory of `mmib annotate`: RSS on a small vs a large input (streaming), GPU memory per batch size.

* **RSS**: runs the real CLI (`python -m mmib_cli annotate`) in a subprocess on `--small` and `--large` generated
  posts (text only by default, so the 100k run stays practical; `--images` adds photos to half the posts) and
  reports, for each, the kernel's peak RSS of the largest process (`ru_maxrss` from `wait4`, catches short spikes)
  and the peak of the whole process tree (main process + DataLoader workers) sampled every `--interval` seconds
  as the sum of PSS (shared pages counted once). Streaming goal: large/small within 10%.
* **GPU**: when CUDA is present, the peak `torch.cuda.max_memory_allocated` of one forward pass per batch size,
  on worst-case rows (`max_length` pieces, every row with a photo); skipped, saying so, otherwise.

Example:
    python benchmarks/memory.py --small 1000 --large 100000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SRC, build_checkpoint, facts_line, hardware, make_photos, make_posts, table  # noqa: E402

CACHE = Path.home() / ".cache" / "mmib-bench"


def _tree_memory(proc: Any) -> tuple[int, int]:
    """(sum of PSS, sum of RSS) in bytes over `proc` and its descendants (0 for vanished processes)."""
    import psutil

    pss = rss = 0
    try:
        members = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0, 0
    for member in members:
        try:
            info = member.memory_full_info()
            pss += getattr(info, "pss", info.rss)
            rss += info.rss
        except psutil.Error:
            continue
    return pss, rss


def run_annotate(posts: Path, model: Path, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Run `mmib annotate` in a subprocess, sampling its tree's memory; returns peaks (MiB) and timing."""
    import psutil

    cmd = [sys.executable, "-m", "mmib_cli", "-q", "annotate", str(posts), "-o", str(out_dir / "out.jsonl"),
           "-m", str(model), "-b", str(args.batch_size), "--device", args.device, "--no-progress", "-F"]
    if args.num_workers is not None:
        cmd += ["--num-workers", str(args.num_workers)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(SRC))
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc = psutil.Process(child.pid)
    peak_pss = peak_rss = 0
    status = rusage = None
    while status is None:
        pss, rss = _tree_memory(proc)
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        pid, status, rusage = os.wait4(child.pid, os.WNOHANG)
        if pid == 0:
            status = None
            time.sleep(args.interval)
    seconds = time.perf_counter() - start
    stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"mmib annotate exited with {code}: {stderr[-2000:]}")
    lines = sum(1 for _ in open(out_dir / "out.jsonl", "rb"))
    return {"posts": lines, "seconds": seconds, "maxrss_mib": rusage.ru_maxrss / 1024,
            "tree_pss_mib": peak_pss / 2**20, "tree_rss_mib": peak_rss / 2**20}


def gpu_memory(model_dir: Path, args: argparse.Namespace) -> list[tuple] | str:
    """Peak CUDA memory (MiB) of one forward per batch size, or why it was skipped."""
    import torch

    if not torch.cuda.is_available():
        return "skipped: CUDA is not available on this machine"
    from mmib_cli.annotation.annotator import Annotator
    from mmib_cli.features import Window

    device = args.device if args.device.startswith("cuda") else "cuda"
    annotator = Annotator.from_pretrained(str(model_dir), device=device, dtype=args.dtype)
    loaded = annotator.ner
    model = loaded.model
    dtype = next(model.parameters()).dtype
    length = loaded.featurizer.max_length
    size = loaded.image_info.image_size if loaded.image_info else 0
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    rows = []
    for batch_size in args.gpu_batch_sizes:
        words = length - 2
        windows = [Window([101] + [1000] * words + [102], [0] + [1] * words + [0], list(range(1, words + 1)), 0,
                          words) for _ in range(batch_size)]
        batch = {k: v.to(device) for k, v in loaded.featurizer.collate(windows, "ner").items()}
        if size:
            batch["pixel_values"] = torch.randn(batch_size, 3, size, size, device=device, dtype=dtype)
            batch["image_present"] = torch.ones(batch_size, dtype=torch.bool, device=device)
        torch.cuda.reset_peak_memory_stats()
        try:
            with torch.inference_mode():
                start = time.perf_counter()
                model(**batch)
                torch.cuda.synchronize()
                seconds = time.perf_counter() - start
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            rows.append((batch_size, length, str(dtype).replace("torch.", ""), f"{peak:.0f}",
                         f"{peak / batch_size:.1f}", f"{1000 * seconds:.1f}"))
        except torch.cuda.OutOfMemoryError:
            rows.append((batch_size, length, str(dtype).replace("torch.", ""), "OOM", "-", "-"))
        del batch
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--images", action="store_true", help="half the posts with a photo (default: text only)")
    parser.add_argument("-b", "--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--interval", type=float, default=0.2, help="memory sampling period, seconds")
    parser.add_argument("--model", default=None, help="checkpoint to run (default: a random-head checkpoint of "
                                                      "the default configuration, MiniLM-L6 + EfficientNet-Lite0)")
    parser.add_argument("--gpu-batch-sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 8, 16, 32, 64, 128, 256])
    parser.add_argument("--json", default=None, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    model = Path(args.model) if args.model else build_checkpoint(CACHE / "default-ner-lora16", "default")
    results = []
    with tempfile.TemporaryDirectory(prefix="mmib-mem-") as tmp:
        work = Path(tmp)
        photos = [f"photos/{p}" for p in make_photos(work / "photos", 24)] if args.images else []
        for n in (args.small, args.large):
            posts = make_posts(work / f"posts-{n}.jsonl", n, image_fraction=0.5, photos=photos)
            results.append(run_annotate(posts, model, args, work))
            posts.unlink()
    facts = hardware(args.device)
    print(f"# mmib annotate peak memory ({facts_line(facts)})")
    print(f"model {model.name}, batch size {args.batch_size}, device {args.device}, "
          f"{'half the posts with photos' if args.images else 'text-only posts'}\n")
    small, large = results
    rows = [(r["posts"], f"{r['seconds']:.0f}", f"{r['posts'] / r['seconds']:.1f}", f"{r['maxrss_mib']:.0f}",
             f"{r['tree_pss_mib']:.0f}", f"{r['tree_rss_mib']:.0f}") for r in results]
    rows.append(("large/small", "", "", f"{large['maxrss_mib'] / small['maxrss_mib']:.3f}",
                 f"{large['tree_pss_mib'] / small['tree_pss_mib']:.3f}",
                 f"{large['tree_rss_mib'] / small['tree_rss_mib']:.3f}"))
    print(table(["posts", "wall s", "posts/s", "peak RSS largest process MiB", "peak tree PSS MiB",
                 "peak tree RSS MiB"], rows))
    ratio = large["maxrss_mib"] / small["maxrss_mib"]
    print(f"\nstreaming goal (large/small peak RSS <= 1.10): {'met' if ratio <= 1.10 else 'NOT met'} ({ratio:.3f})\n")
    gpu = gpu_memory(model, args)
    print("## peak GPU memory per batch size (one forward, worst-case rows)\n")
    if isinstance(gpu, str):
        print(gpu)
    else:
        print(table(["batch size", "pieces/row", "dtype", "peak MiB over weights", "MiB/row", "forward ms"], gpu))
    if args.json:
        Path(args.json).write_text(json.dumps({"facts": facts, "args": vars(args), "rss": results,
                                               "gpu": gpu}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
