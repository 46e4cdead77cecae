"""Facts for `mmib info` and `mmib models`: versions, hardware, checkpoint locations, registry entries."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from mmib_cli._version import __version__


def _embedded_status(spec: Any) -> dict[str, Any]:
    """Whether an embedded checkpoint's files are present, and what its config says about images."""
    directory = spec.checkpoint_dir()
    status: dict[str, Any] = {"path": str(directory), "present": directory.is_dir() and bool(spec.files),
                              "shipped": spec.shipped}
    if not status["present"]:
        return status
    from mmib_cli.storage.format import read_bundle

    parts = read_bundle(directory) or {"model": directory}
    tasks = {}
    for part in parts.values():
        config_file = Path(part) / "config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text(encoding="utf-8"))
            tasks[config.get("task", "?")] = {
                "trained_with_images": bool(config.get("trained_with_images")),
                "text_encoder": config.get("text_encoder", {}).get("source"),
                "image_encoder": config.get("image_encoder", {}).get("source"),
            }
    status["tasks"] = tasks
    status["uses_images"] = any(t["trained_with_images"] for t in tasks.values())
    return status


def collect_info() -> dict[str, Any]:
    """Versions, devices, offline state, checkpoint locations, embedded checkpoints and whether the installed stack
    works (`stack`: `mmib_cli.stack.check_stack`), JSON-serialisable; a broken stack is reported, never raised."""
    from mmib_cli.storage.download import default_cache_dir, hub_endpoint
    from mmib_cli.storage.registry import load_registry, models_dir, registry_path
    from mmib_cli.offline import is_offline
    from mmib_cli.stack import check_stack

    stack = [check.to_dict() for check in check_stack()]
    registry = load_registry()
    return {
        "mmib": __version__,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "transformers": _version("transformers"),
        "huggingface_hub": _version("huggingface_hub"),
        "stack": stack,
        "hardware": _hardware(stack),
        "offline": is_offline(),
        "hub_endpoint": hub_endpoint(),
        "checkpoint_lookup": {
            "order": ["local directory", "registry name", "hub id ORG/NAME[@REV]"],
            "registry": str(registry_path()),
            "embedded_models_dir": str(models_dir()),
            "hub_cache": str(default_cache_dir()),
        },
        "embedded": {name: _embedded_status(spec) for name, spec in registry.items() if spec.source == "embedded"},
    }


def _version(name: str) -> str | None:
    """The version an imported module reports (`2.14.1+cpu`), else its installed distribution's, else None."""
    import sys

    from mmib_cli.stack import installed_version

    module = sys.modules.get(name)
    return getattr(module, "__version__", None) or installed_version(name)


def _hardware(stack: list[dict[str, Any]]) -> dict[str, Any] | None:
    """`device.describe_hardware()`, or None when torch itself is broken."""
    if not stack or not stack[0]["ok"]:
        return None
    from mmib_cli.device import describe_hardware

    return describe_hardware()


def render_info(facts: dict[str, Any]) -> str:
    """Human-readable `mmib info` text."""
    hw = facts["hardware"]
    lines = [
        f"mmib {facts['mmib']} (python {facts['python']}, torch {facts['torch']}, torchvision "
        f"{facts['torchvision']}, transformers {facts['transformers']}, huggingface_hub {facts['huggingface_hub']})",
    ]
    for check in facts["stack"]:
        lines.append(f"stack: {check['name']} ok ({check['detail']})" if check["ok"] else
                     f"stack: {check['name']} BROKEN: {check['detail']}; fix: {check['fix']}")
    if hw is None:
        lines.append("device: unknown (torch does not work)")
    else:
        lines.append(f"device: {hw['auto_device']} (CUDA {'yes' if hw['cuda_available'] else 'no'}, "
                     f"MPS {'yes' if hw['mps_available'] else 'no'}, torch threads {hw['torch_threads']})")
    if hw and hw.get("cuda_devices"):
        lines.append("cuda devices: " + ", ".join(hw["cuda_devices"]))
    mode = "offline (use --online or MMIB_OFFLINE=0 to reach the hub)" if facts["offline"] else "online"
    lines.append(f"network: {mode}; hub endpoint {facts['hub_endpoint']}")
    lookup = facts["checkpoint_lookup"]
    lines.append("checkpoints are looked up as: " + " → ".join(lookup["order"]))
    lines.append(f"  registry: {lookup['registry']}")
    lines.append(f"  embedded models: {lookup['embedded_models_dir']}")
    lines.append(f"  hub cache: {lookup['hub_cache']}")
    for name, status in facts["embedded"].items():
        if not status["present"]:
            lines.append(f"embedded {name}: {'not present' if status['shipped'] else 'not shipped in this release'}")
            continue
        tasks = ", ".join(
            f"{task} ({'trained with images' if t['trained_with_images'] else 'text only: trained without images'})"
            for task, t in sorted(status["tasks"].items()))
        lines.append(f"embedded {name}: present — {tasks}")
    return "\n".join(lines)


MODEL_COLUMNS = (
    ("T15", "twitter2015-test", "entity_micro_f1"),
    ("T17", "twitter2017-test", "entity_micro_f1"),
    ("MNRE", "mnre-test", "micro_f1"),
    ("WNUT17", "wnut17-dev-per-loc-org", "entity_micro_f1"),
)
"""`mmib models` score columns: header, registry `_metrics` dataset, metric (F1 on each test set; WNUT-17 dev
PER/LOC/ORG is the out-of-domain check)."""


def _files_mb(spec: Any) -> float | None:
    """Size of an embedded checkpoint's own files (adapters, heads, configs), None when they are not here."""
    directory = spec.checkpoint_dir()
    paths = [directory.joinpath(*relpath.split("/")) for relpath in spec.files]
    if not paths or not all(path.is_file() for path in paths):
        return None
    return round(sum(path.stat().st_size for path in paths) / 1e6, 1)


def list_models() -> list[dict[str, Any]]:
    """Registry entries with their local availability (embedded present / hub snapshot cached), size, speed and
    scores, so the tiers can be compared side by side."""
    from mmib_cli.storage.registry import load_registry

    rows = []
    for name, spec in load_registry().items():  # registry order: the default first
        row = {"name": name, "source": spec.source, "revision": spec.revision, "license": spec.license,
               "docs": spec._docs, "metrics": spec._metrics, "encoder": spec.extra.get("encoder") or {},
               "posts_per_s_cpu": spec.extra.get("posts_per_s_cpu"),
               "requires_extra": spec.extra.get("requires_extra"),
               "scores": {label: spec._metrics.get(dataset, {}).get(metric)
                          for label, dataset, metric in MODEL_COLUMNS}}
        if not spec.shipped:
            row["local"] = "not shipped"
        elif spec.source == "embedded":
            row["local"] = "present" if _embedded_status(spec)["present"] else "missing"
            row["size_mb"] = _files_mb(spec)
        else:
            row["repo_id"] = spec.repo_id
            row["local"] = "cached" if _hub_cached(spec.repo_id, spec.revision) else "not downloaded"
        rows.append(row)
    return rows


def _hub_cached(repo_id: str | None, revision: str | None) -> bool:
    if not repo_id:
        return False
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, revision=revision, local_files_only=True)
        return True
    except Exception:  # not cached (or cache unreadable): report as not downloaded
        return False


def _size(row: dict[str, Any]) -> str:
    own = row.get("size_mb")
    encoder = row["encoder"].get("size_mb")
    text = f"{own:g} MB" if own is not None else "-"
    return text + (f" + {encoder:g} MB encoder" if encoder is not None else "")


def render_models(rows: list[dict[str, Any]]) -> str:
    """A plain table of registry entries, one line each: where it is, its size (own files + base encoder), CPU
    speed and F1 per test set; then what each needs and is."""
    if not rows:
        return "no registry entries"
    header = (f"{'NAME':<14} {'LOCAL':<14} {'SIZE':<26} {'POSTS/S CPU':>11} "
              + " ".join(f"{label:>6}" for label, _, _ in MODEL_COLUMNS))
    lines = [header]
    for row in rows:
        speed = row.get("posts_per_s_cpu")
        scores = " ".join(f"{value:>6.2f}" if value is not None else f"{'-':>6}" for value in row["scores"].values())
        lines.append(f"{row['name']:<14} {row['local']:<14} {_size(row):<26} "
                     f"{(f'{speed:g}' if speed is not None else '-'):>11} {scores}")
    lines.append("")
    lines.append("F1 on the test sets of Twitter-2015 / Twitter-2017 (entities), MNRE (relations), and WNUT-17 dev "
                 "(PER/LOC/ORG, out of domain); text only.")
    for row in rows:
        where = row.get("repo_id") or "package"
        needs = f"; needs: pip install \"mmib[{row['requires_extra']}]\"" if row.get("requires_extra") else ""
        encoder = f"; encoder {row['encoder']['name']}" if row["encoder"].get("name") else ""
        lines.append(f"{row['name']}: {row.get('docs') or ''} [{row['source']}, {where}{encoder}{needs}]")
    return "\n".join(lines)
