"""What a run was made from, so `--resume` never mixes inputs, models or settings in one output (torch-free).

A run writes `OUTPUT.run.json` next to its output before its first record: the model (`name@revision` and a sha256
digest of its files) and the options that change the output. `--resume` recomputes them and refuses to continue
unless the model and options are the same. The input is checked line by line instead: the writer keeps the digest
of the input line each record answers (`OUTPUT.run.lines`, see `io.writer`), computed as the reader reads it, and
`ResumeCheck` compares every kept record's digest with the current input's line as the resumed run reads it (an
input that only grew at its end resumes; a line that was edited, removed or replaced is refused).
"""
from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mmib_cli.errors import MMIBError, ResumeMismatch
from mmib_cli.io.safefile import read_sidecar, write_atomic
from mmib_cli.runs.plan import RunOptions, is_uri
from mmib_cli.storage.model_info import ModelInfo, describe_model

__all__ = ["ModelInfo", "ResumeCheck", "ResumeMismatch", "RunFingerprint", "describe_model", "run_info_path"]

RUN_FORMAT_VERSION = 2
"""Version 2: the input is proven line by line (`OUTPUT.run.lines`) instead of by a digest of its first bytes."""

OUTPUT_OPTIONS = ("task", "relations", "pair", "min_score", "max_pairs", "keep_none", "type_constraints",
                  "on_missing_image", "image_root", "confine_images", "id_field", "text_field", "image_field", "shard",
                  "dtype")
"""The options whose value changes an output line (batch size, workers, device and limit do not)."""


def run_info_path(output: Path) -> Path:
    """The provenance file of an output: `OUTPUT.run.json` next to it."""
    return output.with_name(output.name + ".run.json")


@dataclass(frozen=True)
class RunFingerprint:
    """What one run is made from (the content of `OUTPUT.run.json`)."""

    model: str
    model_digest: str
    options: dict[str, Any]

    @classmethod
    def of(cls, opts: RunOptions, model: ModelInfo) -> RunFingerprint:
        """Fingerprint a run about to start (reads nothing: the input is checked line by line, `ResumeCheck`)."""
        options = {key: getattr(opts, key) for key in OUTPUT_OPTIONS}
        options["shard"] = list(opts.shard) if opts.shard else None
        if opts.image_root and not is_uri(opts.image_root):  # the same folder however it is spelled
            options["image_root"] = str(Path(opts.image_root).resolve())
        options = json.loads(json.dumps(options, default=str))
        return cls(model.label, model.digest, options)

    def to_json(self) -> dict[str, Any]:
        return {"format": "mmib-run", "version": RUN_FORMAT_VERSION, **asdict(self),
                "input": "checked line by line: OUTPUT.run.lines"}

    def write(self, path: Path) -> None:
        """Write the fingerprint to `path` atomically (`PATH.tmp` created new, never through a link; renamed)."""
        write_atomic(path, (json.dumps(self.to_json(), indent=2) + "\n").encode("utf-8"), fsync=False)

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
            stored = json.loads(read_sidecar(path).decode("utf-8"))
            if not isinstance(stored, dict) or stored.get("format") != "mmib-run":
                raise ValueError("not an mmib run file")
        except FileNotFoundError:
            raise ResumeMismatch(f"cannot resume {resumed}: {path.name} is missing, so nothing says which input "
                                 f"and model it was made from; {hint}") from None
        except (OSError, ValueError, MMIBError) as exc:
            raise ResumeMismatch(f"cannot resume {resumed}: cannot read {path}: {exc}; {hint}") from exc
        if stored.get("version", 1) < RUN_FORMAT_VERSION:
            raise ResumeMismatch(f"cannot resume {resumed}: its run file is from an earlier mmib, which did not record "
                                 f"the input line each record answers; {hint}")
        if (stored.get("model"), stored.get("model_digest")) != (self.model, self.model_digest):
            what = "files" if stored.get("model") == self.model else f"model {stored.get('model')}"
            raise ResumeMismatch(f"cannot resume {resumed}: it was made with {what}, not {self.model} "
                                 f"({self.model_digest[:19]}); {hint}")
        changed = _changed(stored.get("options") or {}, self.options, OUTPUT_OPTIONS)
        if changed:
            raise ResumeMismatch(f"cannot resume {resumed}: options differ from the interrupted run's "
                                 f"({'; '.join(changed)}); rerun with the same options or {hint}")


class ResumeCheck:
    """Proves, as a resumed run reads its input, that every kept record answers the current input's line.

    `see` is called for every line read, in order, with its digest (`io.jsonl.read_lines_traced`); `selected` for
    every line the run is about to annotate; `finish` at the end of the input.

    Args:
        done: input line -> digest of the line each kept record was made from (`AtomicJSONLWriter.done_digests`).
        output: the resumed output, for the messages.
    """

    def __init__(self, done: Mapping[int, str | None], output: str = "the output") -> None:
        self.done = dict(done)
        self.last = max(self.done, default=0)
        self.output = output
        self.read = 0

    def _refuse(self, why: str) -> ResumeMismatch:
        return ResumeMismatch(f"cannot resume {self.output}: {why}; pass --force to start over")

    def see(self, line: int, digest: str | None) -> None:
        """Check one input line that was read (a kept line must have the digest it was made from)."""
        self.read = line
        if line in self.done:
            stored = self.done[line]
            if stored is not None and stored != digest:
                raise self._refuse(f"input line {line} is not the line its kept record was made from (the input "
                                   "was edited or replaced since; only appending lines is allowed)")

    def selected(self, line: int) -> None:
        """Check a line about to be annotated: a kept record after it means a record is missing in between."""
        if line < self.last:
            raise self._refuse(f"it has no record for input line {line} but has one for line {self.last} (records "
                               "missing or out of order: not one run's output)")

    def finish(self) -> None:
        """At the end of the input: every kept record must answer a line the input still has."""
        if self.last > self.read:
            raise self._refuse(f"it holds a record for input line {self.last} but the input has only {self.read} "
                               "lines (lines were removed since)")


def _changed(old: dict[str, Any], new: dict[str, Any], keys: Collection[str]) -> list[str]:
    return [f"{key}: {old.get(key)!r} then, {new.get(key)!r} now" for key in keys if old.get(key) != new.get(key)]
