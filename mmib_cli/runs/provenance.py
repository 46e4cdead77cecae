"""What a run was made from, so `--resume` never mixes inputs, models or settings in one output (torch-free).

A run writes `OUTPUT.run.json` next to its output before its first record: the model (`name@revision` and a sha256
digest of its files), the options that change the output, and the input's size and sha256 when the run started.
`--resume` recomputes them and refuses to continue unless the model and options are the same and the input still
starts with the same bytes (an input that only grew at its end resumes; one that was edited or replaced does not).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmib_cli.errors import ResumeMismatch
from mmib_cli.runs.plan import RunOptions, is_uri

__all__ = ["ModelInfo", "ResumeMismatch", "RunFingerprint", "describe_model", "run_info_path"]

OUTPUT_OPTIONS = ("task", "relations", "pair", "min_score", "max_pairs", "keep_none", "type_constraints",
                  "on_missing_image", "image_root", "id_field", "text_field", "image_field", "shard", "dtype")
"""The options whose value changes an output line (batch size, workers, device and limit do not)."""
_BLOCK = 1 << 20


@dataclass(frozen=True)
class ModelInfo:
    """A resolved `--model`: its label, the task models it holds and a digest of its files."""

    label: str
    tasks: frozenset[str]
    digest: str


DESCRIPTIVE_FILES = frozenset({"README.md", "metrics.json", "training_args.json"})
"""Checkpoint files that describe a model without changing its output: left out of its digest, so a model card
fixed in a new release does not refuse `--resume` of an output the same weights started."""


def describe_model(model: str, *, online: bool | None = None) -> ModelInfo:
    """Resolve `--model` (without loading it) and describe it (the digest covers every file but `DESCRIPTIVE_FILES`).

    Raises:
        MMIBError: the model cannot be resolved or its config cannot be read.
    """
    from mmib_cli.storage.resolve import resolve_model
    from mmib_cli.storage.format import checkpoint_files, read_bundle, read_config

    resolved = resolve_model(model, online=online)
    parts = read_bundle(resolved.path) or {"single": resolved.path}
    tasks = frozenset(str(read_config(path).get("task")) for path in parts.values())
    files = {rel: sha for rel, sha in checkpoint_files(resolved.path).items()
             if rel.rsplit("/", 1)[-1] not in DESCRIPTIVE_FILES}
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return ModelInfo(resolved.label, tasks, "sha256:" + digest)


def run_info_path(output: Path) -> Path:
    """The provenance file of an output: `OUTPUT.run.json` next to it."""
    return output.with_name(output.name + ".run.json")


def _hash_prefix(path: str, size: int | None = None) -> tuple[int, str]:
    """(bytes hashed, sha256) of the first `size` bytes of `path` (all of it when None)."""
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while size is None or done < size:
            block = f.read(_BLOCK if size is None else min(_BLOCK, size - done))
            if not block:
                break
            digest.update(block)
            done += len(block)
    return done, "sha256:" + digest.hexdigest()


def seekable_input(path: str) -> bool:
    """Whether INPUT is a regular file that can be read again (not stdin, a FIFO or a device)."""
    if path == "-":
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


@dataclass(frozen=True)
class RunFingerprint:
    """What one run is made from (the content of `OUTPUT.run.json`)."""

    model: str
    model_digest: str
    options: dict[str, Any]
    input_bytes: int | None  # None: the input cannot be read twice (stdin, a pipe)
    input_sha256: str | None

    @classmethod
    def of(cls, opts: RunOptions, model: ModelInfo) -> RunFingerprint:
        """Fingerprint a run about to start (reads the input once to hash it)."""
        options = {key: getattr(opts, key) for key in OUTPUT_OPTIONS}
        options["shard"] = list(opts.shard) if opts.shard else None
        if opts.image_root and not is_uri(opts.image_root):  # the same folder however it is spelled
            options["image_root"] = str(Path(opts.image_root).resolve())
        options = json.loads(json.dumps(options, default=str))
        size, digest = _hash_prefix(opts.input_path) if seekable_input(opts.input_path) else (None, None)
        return cls(model.label, model.digest, options, size, digest)

    def to_json(self) -> dict[str, Any]:
        return {"format": "mmib-run", "version": 1, **asdict(self)}

    def write(self, path: Path) -> None:
        """Write the fingerprint to `path` atomically."""
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)

    def check_resume(self, path: Path, input_path: str, resumed: Path) -> None:
        """Refuse to resume `resumed` unless it was made from this input, model and options.

        Args:
            path: the `OUTPUT.run.json` written by the interrupted run.
            input_path: this run's INPUT.
            resumed: the partial or finished output being continued (for the messages).

        Raises:
            ResumeMismatch: the file is missing or unreadable, or the model, an option or the input differs.
        """
        hint = "pass --force to start over"
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("format") != "mmib-run":
                raise ValueError("not an mmib run file")
        except FileNotFoundError:
            raise ResumeMismatch(f"cannot resume {resumed}: {path.name} is missing, so nothing says which input "
                                 f"and model it was made from; {hint}") from None
        except (OSError, ValueError) as exc:
            raise ResumeMismatch(f"cannot resume {resumed}: cannot read {path}: {exc}; {hint}") from exc
        if (stored.get("model"), stored.get("model_digest")) != (self.model, self.model_digest):
            what = "files" if stored.get("model") == self.model else f"model {stored.get('model')}"
            raise ResumeMismatch(f"cannot resume {resumed}: it was made with {what}, not {self.model} "
                                 f"({self.model_digest[:19]}); {hint}")
        changed = _changed(stored.get("options") or {}, self.options, OUTPUT_OPTIONS)
        if changed:
            raise ResumeMismatch(f"cannot resume {resumed}: options differ from the interrupted run's "
                                 f"({'; '.join(changed)}); rerun with the same options or {hint}")
        self._check_input(stored, input_path, resumed, hint)

    def _check_input(self, stored: dict[str, Any], input_path: str, resumed: Path, hint: str) -> None:
        size, digest = stored.get("input_bytes"), stored.get("input_sha256")
        if size is None or digest is None:
            raise ResumeMismatch(f"cannot resume {resumed}: the interrupted run read stdin or a pipe, so its input "
                                 f"cannot be checked; {hint}")
        if not seekable_input(input_path):
            raise ResumeMismatch(f"cannot resume from {input_path}: --resume needs INPUT to be a regular file it "
                                 "can check against the interrupted run (not stdin or a pipe)")
        done, prefix = _hash_prefix(input_path, int(size))
        if done < int(size) or prefix != digest:
            raise ResumeMismatch(f"cannot resume {resumed}: {input_path} is not the input it was made from (its "
                                 f"first {size} bytes differ or it is shorter; only appending lines is allowed); "
                                 f"{hint}")


def _changed(old: dict[str, Any], new: dict[str, Any], keys: Collection[str]) -> list[str]:
    return [f"{key}: {old.get(key)!r} then, {new.get(key)!r} now" for key in keys if old.get(key) != new.get(key)]
