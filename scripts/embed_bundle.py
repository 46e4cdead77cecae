"""Embed trained NER + RE checkpoints as a bundle in models/ and update its registry entry; run from the repo root.

    python scripts/embed_bundle.py --name mmib-base --ner RUN/ner --re RUN/re \
        --score twitter2015-test=t15.json --score twitter2017-test=t17.json --score mnre-test=mnre.json \
        --score wnut17-dev-per-loc-org=wnut.json

Copies only what a checkpoint is (config.json, model.safetensors, metrics.json, training_args.json; never the
trainer state in `last/`) into `models/NAME/{ner,re}`, writes `bundle.json`, keeps `models/NAME/README.md` (the
card, written by hand), then sets the entry's `files` (sha256 of every file), `num_params` (parameters of both parts
with their base encoders, as tests/test_checkpoint.py counts them), `_metrics` (from `mmib eval --output-json`
files, or the `per_loc_org` block of `scripts/wild_eval.py ner` output) and drops `"shipped": false`.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from mmib_cli.storage.format import write_bundle
from mmib_cli.storage.verify import sha256_file

CHECKPOINT_FILES = ("config.json", "model.safetensors", "metrics.json", "training_args.json")
NER_PREFIX = "entity_micro_"


def _copy_checkpoint(source: Path, staging: Path) -> Path:
    staging.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, staging / name)
    if not (staging / "config.json").is_file() or not (staging / "model.safetensors").is_file():
        raise SystemExit(f"error: {source} is not a checkpoint (config.json and model.safetensors needed)")
    return staging


def _score(path: Path) -> dict[str, float]:
    """`mmib eval --output-json` metrics (ner: entity_micro_*; re: micro_* + accuracy) or wild_eval's per_loc_org."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if "per_loc_org" in data:
        return {NER_PREFIX + k: data["per_loc_org"][k] for k in ("precision", "recall", "f1")}
    if data.get("task") == "re":
        scores = {f"micro_{k[0]}" if k != "f1" else "micro_f1": data[k] for k in ("precision", "recall", "f1")}
        if "accuracy" in data:
            scores["accuracy"] = data["accuracy"]
        return scores
    return {NER_PREFIX + (k[0] if k != "f1" else "f1"): data[k] for k in ("precision", "recall", "f1")}


def _num_params(bundle: Path) -> int:
    from mmib_cli.checkpoint.assemble import load_model

    return sum(p.numel() for part in ("ner", "re") for p in load_model(bundle / part).model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="registry name, e.g. mmib-base")
    parser.add_argument("--ner", required=True, type=Path, help="trained NER checkpoint directory")
    parser.add_argument("--re", required=True, type=Path, help="trained (and calibrated) RE checkpoint directory")
    parser.add_argument("--score", action="append", default=[], metavar="DATASET=JSON",
                        help="registry _metrics entry from an eval JSON file (repeatable)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    args = parser.parse_args()
    target = args.models_dir / args.name
    work = args.models_dir / f".{args.name}.staging"
    if work.exists():
        shutil.rmtree(work)
    parts = {"ner": _copy_checkpoint(args.ner, work / "ner"), "re": _copy_checkpoint(args.re, work / "re")}
    for part in parts:
        if (target / part).exists():
            shutil.rmtree(target / part)
    write_bundle(target, parts)
    shutil.rmtree(work)
    registry_file = args.models_dir / "registry.json"
    registry = json.loads(registry_file.read_text(encoding="utf-8"))
    entry = registry["models"][args.name]
    files = sorted(p for p in target.rglob("*") if p.is_file())
    entry["files"] = {p.relative_to(target).as_posix(): sha256_file(p) for p in files}
    entry["num_params"] = _num_params(target)
    for item in args.score:
        dataset, _, path = item.partition("=")
        entry["_metrics"][dataset] = _score(Path(path))
    entry.pop("shipped", None)
    registry_file.write_text(json.dumps(registry, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in files)
    print(json.dumps({"bundle": str(target), "files": len(files), "bytes": size, "num_params": entry["num_params"],
                      "metrics": entry["_metrics"]}, indent=2))


if __name__ == "__main__":
    main()
