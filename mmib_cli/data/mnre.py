"""Reader for MNRE v2 relation data (one Python-dict literal per line) and `ours_rel2id.json`.

A line looks like `{'token': [...], 'h': {'name': ..., 'pos': [s, e]}, 't': {...}, 'img_id': 'x.jpg',
'relation': '/per/org/member_of'}` (single quotes: not JSON). Each line is parsed with `ast.literal_eval`, which
only builds literals and never runs code. Spans are `[start, end)` word indices (see shared/data/SOURCES.md §2).

The auxiliary crop dicts (`mre_{split}_dict.pth`) are keyed by the 0-based position of an instance in the file;
for files without blank lines that is `instance.line - 1`, and always the index in the list `read_mnre` returns.
"""
from __future__ import annotations

import ast
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mmib_cli.errors import DataFormatError
from mmib_cli.model.configuration import RE_LABELS

logger = logging.getLogger(__name__)

SYMMETRIC_RELATIONS = frozenset({"peer", "couple", "siblings", "neighbor", "alumi", "alternate_names"})
"""Relation names (last path part of the label) that hold in both directions; `None` is symmetric too."""

MAX_LINE_CHARS = 1_000_000  # longest real line is ~1 kB; refuse absurd ones before literal_eval sees them


@dataclass
class MNREInstance:
    """One MNRE instance: a tweet, a head and a tail entity, its image and the relation between them.

    Attributes:
        words: the tweet's tokens.
        head: `(start, end)` word span of the head entity, end exclusive.
        tail: `(start, end)` word span of the tail entity, end exclusive.
        head_name: the head entity's surface text as given in the file.
        tail_name: the tail entity's surface text as given in the file.
        image_id: the image file name as given (`img_id`, already ends in `.jpg`).
        relation: one of `RE_LABELS` (`"None"` for no relation).
        line: 1-based line number in the file.
    """

    words: list[str]
    head: tuple[int, int]
    tail: tuple[int, int]
    head_name: str
    tail_name: str
    image_id: str
    relation: str
    line: int


def _where(path: Path, lineno: int) -> str:
    return f"{path}:{lineno}"


def _span(entity: Any, key: str, n_words: int, where: str) -> tuple[str, tuple[int, int]]:
    """Validate one `{'name': str, 'pos': [start, end]}` entity against a sentence of `n_words` words."""
    if not isinstance(entity, dict) or "pos" not in entity or "name" not in entity:
        raise DataFormatError(f"{where}: '{key}' must be a dict with 'name' and 'pos'")
    name, pos = entity["name"], entity["pos"]
    if not isinstance(name, str):
        raise DataFormatError(f"{where}: '{key}.name' must be a string, got {name!r}")
    if (
        not isinstance(pos, (list, tuple))
        or len(pos) != 2
        or not all(isinstance(p, int) and not isinstance(p, bool) for p in pos)
    ):
        raise DataFormatError(f"{where}: '{key}.pos' must be [start, end] integers, got {pos!r}")
    start, end = pos
    if not 0 <= start < end <= n_words:
        raise DataFormatError(
            f"{where}: '{key}.pos' {list(pos)} is not a non-empty [start, end) span within {n_words} words"
        )
    return name, (start, end)


def _parse_line(text: str, path: Path, lineno: int, labels: set[str]) -> MNREInstance:
    where = _where(path, lineno)
    if len(text) > MAX_LINE_CHARS:
        raise DataFormatError(f"{where}: line longer than {MAX_LINE_CHARS} characters")
    try:
        record = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise DataFormatError(f"{where}: not a Python dict literal ({type(exc).__name__}: {exc})") from None
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: expected a dict, got {type(record).__name__}")
    missing = [k for k in ("token", "h", "t", "img_id", "relation") if k not in record]
    if missing:
        raise DataFormatError(f"{where}: missing key(s) {', '.join(missing)}")
    words = record["token"]
    if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
        raise DataFormatError(f"{where}: 'token' must be a non-empty list of strings")
    head_name, head = _span(record["h"], "h", len(words), where)
    tail_name, tail = _span(record["t"], "t", len(words), where)
    image_id, relation = record["img_id"], record["relation"]
    if not isinstance(image_id, str) or not image_id:
        raise DataFormatError(f"{where}: 'img_id' must be a non-empty string, got {image_id!r}")
    if relation not in labels:
        raise DataFormatError(f"{where}: unknown relation {relation!r} (not one of the {len(labels)} RE labels)")
    return MNREInstance(
        words=words,
        head=head,
        tail=tail,
        head_name=head_name,
        tail_name=tail_name,
        image_id=image_id,
        relation=relation,
        line=lineno,
    )


def iter_mnre(path: str | Path) -> Iterator[MNREInstance]:
    """Yield the instances of an MNRE text file one by one (blank lines are skipped).

    Args:
        path: an MNRE split file (`mnre_train.txt` / `ours_train.txt` style).

    Yields:
        MNREInstance per non-blank line, in file order.

    Raises:
        DataFormatError: a line is not a dict literal, a key is missing, a span is outside the words, or the
            relation is not in `RE_LABELS`; the message names `file:line`.
        FileNotFoundError: `path` does not exist.
    """
    path = Path(path)
    labels = set(RE_LABELS)
    name_mismatch = 0
    try:
        with path.open(encoding="utf-8-sig", newline="\n") as handle:
            for lineno, raw in enumerate(handle, start=1):
                text = raw.strip()
                if not text:
                    continue
                instance = _parse_line(text, path, lineno, labels)
                for name, (start, end) in ((instance.head_name, instance.head), (instance.tail_name, instance.tail)):
                    if name != " ".join(instance.words[start:end]):
                        name_mismatch += 1
                yield instance
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if name_mismatch:
        logger.warning("%s: %d entity names differ from the words their span covers", path, name_mismatch)


def read_mnre(path: str | Path) -> list[MNREInstance]:
    """Read a whole MNRE text file.

    Args:
        path: an MNRE split file.

    Returns:
        The instances in file order (list index = key of the `mre_*_dict.pth` crop dicts).

    Raises:
        DataFormatError: see `iter_mnre`.
    """
    return list(iter_mnre(path))


def image_path(instance: MNREInstance, images_dir: str | Path) -> Path | None:
    """The instance's photo `images_dir/<image_id>`, or None when the file is missing.

    Args:
        instance: an instance from `read_mnre`.
        images_dir: the split's image folder (e.g. `img_org/train/`).

    Returns:
        The existing file's path, else None.
    """
    image_id = instance.image_id
    if "/" in image_id or "\\" in image_id or image_id in (".", ".."):
        return None
    candidate = Path(images_dir) / image_id
    return candidate if candidate.is_file() else None


def load_rel2id(path: str | Path) -> dict[str, int]:
    """Read `ours_rel2id.json` and check it is exactly `RE_LABELS` with ids 0..22 in order.

    Args:
        path: the JSON file (`{"None": 0, "/per/per/parent": 1, ...}`).

    Returns:
        The mapping label → id.

    Raises:
        DataFormatError: the file is not a JSON object of label → int, or its labels or ids differ from
            `RE_LABELS` (the message lists the differences).
    """
    path = Path(path)
    try:
        mapping = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in mapping.items()
    ):
        raise DataFormatError(f"{path}: expected a JSON object mapping relation labels to integer ids")
    expected = {label: i for i, label in enumerate(RE_LABELS)}
    if mapping != expected:
        problems = []
        missing = [k for k in expected if k not in mapping]
        extra = [k for k in mapping if k not in expected]
        moved = [
            f"{k}={mapping[k]} (expected {expected[k]})" for k in expected if k in mapping and mapping[k] != expected[k]
        ]
        if missing:
            problems.append(f"missing {missing}")
        if extra:
            problems.append(f"unexpected {extra}")
        if moved:
            problems.append(f"different ids {moved}")
        raise DataFormatError(
            f"{path}: does not match the {len(RE_LABELS)} MMIB relation labels: {'; '.join(problems)}"
        )
    return dict(mapping)


def is_symmetric(relation: str) -> bool:
    """Whether `relation` (an MNRE label) holds in both directions: `None` and the `SYMMETRIC_RELATIONS`."""
    return relation == "None" or relation.rsplit("/", 1)[-1] in SYMMETRIC_RELATIONS


def reversed_pairs(instances: Sequence[MNREInstance]) -> list[MNREInstance]:
    """The annotated pairs read the other way round, labelled by what the label set says about that direction.

    - A symmetric relation (`peer`, `couple`, ...) keeps its label: the model should say the same both ways.
    - An asymmetric relation between entities of one type (`/loc/loc/contain`, `/per/per/parent`,
      `/org/org/subsidiary`, ...) becomes `None`: "A contains B" excludes "B contains A".
    - A relation between types (`/per/org/member_of`) and `None` pairs are not reversed: the reversed direction
      of a typed label is no MNRE label at all (the type constraints exclude it at annotation time), and a
      reversed `None` pair may hold the inverse relation.

    A reversed pair that is annotated itself in the same sentence is skipped (the annotation wins).

    Args:
        instances: annotated instances, e.g. `read_mnre("train.txt")`.

    Returns:
        New instances (same words and image, head and tail swapped), in input order.
    """
    annotated = {(tuple(x.words), x.head, x.tail) for x in instances}
    out: list[MNREInstance] = []
    for x in instances:
        parts = x.relation.split("/")
        if x.relation == "None" or (len(parts) == 4 and parts[1] != parts[2] and not is_symmetric(x.relation)):
            continue
        if (tuple(x.words), x.tail, x.head) in annotated:
            continue
        relation = x.relation if is_symmetric(x.relation) else "None"
        out.append(replace(x, head=x.tail, tail=x.head, head_name=x.tail_name, tail_name=x.head_name,
                           relation=relation))
    return out
