"""Reader for Label Studio JSON exports: reviewed posts → NER sentences (BIO) and RE instances for `mmib train`.

A task's labels come from its reviewed ``annotations`` (not cancelled; a ground-truth one first, else the most recently
updated), or, only with ``use_predictions``, from its latest ``predictions`` when it has no annotation (Label
Studio's plain JSON export lists predictions by id only; `mmib export` tasks and snapshot exports with predictions
hold them in full). Tasks with neither are left out and counted. Entity regions are ``labels`` results (``value.start``/``end``, code points, as
written by `mmib export`); relations are ``relation`` results between two regions (``direction: left`` swaps them).
A pair the model related (in the task's predictions) that the reviewer's annotation no longer relates becomes a
``None`` instance, so removing a wrong relation teaches the model too.

Offsets are checked against ``value.text``: offsets counted in UTF-16 code units (older Label Studio versions with
emoji) are converted; a region that matches neither way is left out with a warning.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qs, urlparse

from mmib_cli.data.conll import ConllSentence, is_readable_tag
from mmib_cli.data.mnre import MNREInstance
from mmib_cli.errors import DataFormatError, UsageError
from mmib_cli.io.outputs import field_mapping, field_objects, field_offset
from mmib_cli.model.configuration import RE_LABELS

logger = logging.getLogger(__name__)

__all__ = ["Region", "ReviewedPost", "ReadStats", "is_label_studio_export", "read_label_studio", "split_holdout",
           "to_mnre", "to_sentence"]


@dataclass(frozen=True)
class Region:
    """One labelled span: code-point offsets into the post text, its entity type and its Label Studio id."""

    start: int
    end: int
    label: str
    rid: str


@dataclass
class ReviewedPost:
    """A task's text and the labels a reviewer left on it (or the model's, with `use_predictions`)."""

    task: Any
    text: str
    image: str | None
    regions: list[Region]
    relations: list[tuple[str, str, str]]  # (head rid, tail rid, relation)
    removed: list[tuple[str, str]]  # predicted related pairs the reviewer left unrelated: None instances
    source: str  # "annotation" or "prediction"


@dataclass
class ReadStats:
    """What a read kept and left out (logged, and reported by `mmib train`)."""

    tasks: int = 0
    annotated: int = 0
    from_predictions: int = 0
    unlabelled: int = 0
    bad_regions: int = 0
    problems: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        self.bad_regions += 1
        if len(self.problems) < 20:
            self.problems.append(message)


def is_label_studio_export(path: str | Path) -> bool:
    """Whether `path` is a JSON file holding a list (Label Studio's JSON export), judged by its first character."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            head = fh.read(64).lstrip()
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith("[")


def _choose(task: dict[str, Any], use_predictions: bool) -> tuple[dict[str, Any] | None, str]:
    annotations = [a for a in field_objects(task.get("annotations")) if not a.get("was_cancelled")]
    if annotations:
        ranked = sorted(annotations, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at") or ""),
                                                    a.get("id") if isinstance(a.get("id"), int) else 0))
        return ranked[-1], "annotation"
    predictions = _predictions(task, None)
    if use_predictions and predictions:
        return predictions[-1], "prediction"
    return None, ""


def _predictions(task: dict[str, Any], annotation: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The task's predictions as objects: Label Studio's plain export lists only their ids, but embeds the
    prediction an annotation started from in the annotation; `mmib export` tasks and snapshot exports hold them."""
    found = field_objects(task.get("predictions"))
    if annotation is not None and isinstance(annotation.get("prediction"), dict):
        found.append(annotation["prediction"])
    return found


def _utf16_to_codepoints(text: str, offset: int) -> int | None:
    units = 0
    for index, char in enumerate(text):
        if units == offset:
            return index
        units += 2 if ord(char) > 0xFFFF else 1
    return len(text) if units == offset else None


def _region(item: dict[str, Any], text: str, where: str, stats: ReadStats) -> Region | None:
    value = field_mapping(item.get("value"))
    labels = value.get("labels")
    start, end = field_offset(value.get("start")), field_offset(value.get("end"))
    if start is None or end is None or not isinstance(labels, list) or not labels:
        stats.note(f"{where}: region {item.get('id')!r} has no start/end offsets or no label list")
        return None
    if not (isinstance(labels[0], str) and is_readable_tag(f"B-{labels[0]}")):
        stats.note(f"{where}: region {item.get('id')!r} has label {labels[0]!r}, not an entity type mmib reads")
        return None
    quoted = value.get("text")
    if isinstance(quoted, str) and text[start:end] != quoted:
        s16, e16 = _utf16_to_codepoints(text, start), _utf16_to_codepoints(text, end)
        if s16 is None or e16 is None or text[s16:e16] != quoted:
            stats.note(f"{where}: region {item.get('id')!r} [{start}:{end}] is {text[start:end]!r}, "
                       f"not {quoted!r}")
            return None
        start, end = s16, e16
    if not 0 <= start < end <= len(text):
        stats.note(f"{where}: region {item.get('id')!r} [{start}:{end}] lies outside the text")
        return None
    return Region(start, end, str(labels[0]), str(item.get("id")))


def _related(result: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(head id, tail id, label) of the relation results (empty label for an unlabelled relation)."""
    out = []
    for item in result:
        if item.get("type") != "relation" or not item.get("from_id") or not item.get("to_id"):
            continue
        head, tail = str(item["from_id"]), str(item["to_id"])
        if item.get("direction") == "left":
            head, tail = tail, head
        labels = item.get("labels")
        out.append((head, tail, str(labels[0]) if isinstance(labels, list) and labels else ""))
    return out


def _post(task: dict[str, Any], where: str, use_predictions: bool, stats: ReadStats) -> ReviewedPost | None:
    data = field_mapping(task.get("data"))
    text = data.get("text")
    if not isinstance(text, str):
        raise DataFormatError(f"{where}: the task has no data.text string")
    chosen, source = _choose(task, use_predictions)
    if chosen is None:
        stats.unlabelled += 1
        return None
    result = field_objects(chosen.get("result"))
    regions = [r for item in result if item.get("type") == "labels"
               for r in [_region(item, text, where, stats)] if r is not None]
    ids = {r.rid for r in regions}
    relations = []
    for head, tail, label in _related(result):
        if head in ids and tail in ids and label in RE_LABELS and label != "None":
            relations.append((head, tail, label))
        else:
            stats.note(f"{where}: relation {head}->{tail} ({label!r}) has no known label or joins a dropped region")
    removed: list[tuple[str, str]] = []
    if source == "annotation":  # predicted relations whose two regions the reviewer kept but left unrelated
        spans = {r.rid: (r.start, r.end) for r in regions}
        kept = {(spans[h], spans[t]) for h, t, _ in relations}
        for prediction in _predictions(task, chosen):
            presult = field_objects(prediction.get("result"))
            pspans = {str(r.get("id")): (field_offset(field_mapping(r.get("value")).get("start")),
                                         field_offset(field_mapping(r.get("value")).get("end")))
                      for r in presult if r.get("type") == "labels"}
            by_span = {span: rid for rid, span in spans.items()}
            for head, tail, _ in _related(presult):
                pair = (pspans.get(head), pspans.get(tail))
                if pair[0] in by_span and pair[1] in by_span and pair not in kept:
                    removed.append((by_span[pair[0]], by_span[pair[1]]))
                    kept.add(pair)
    image = data.get("image")
    stats.annotated += source == "annotation"
    stats.from_predictions += source == "prediction"
    return ReviewedPost(task.get("id"), text, image if isinstance(image, str) and image else None, regions,
                        relations, removed, source)


def read_label_studio(path: str | Path, *, use_predictions: bool = False) -> tuple[list[ReviewedPost], ReadStats]:
    """Read a Label Studio JSON export (a list of tasks) into reviewed posts.

    Args:
        path: the export file (Label Studio's "JSON" export format, or tasks as written by `mmib export`).
        use_predictions: use a task's predictions when it has no annotation (default: leave it out).

    Returns:
        The labelled posts in file order, and what was kept or left out.

    Raises:
        DataFormatError: the file is not JSON, not a list of tasks, or a task has no `data.text`.
    """
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: not a Label Studio JSON export ({exc})") from None
    if not isinstance(tasks, list):
        raise DataFormatError(f"{path}: a Label Studio JSON export is a list of tasks, got {type(tasks).__name__}")
    stats = ReadStats(tasks=len(tasks))
    posts = []
    for index, task in enumerate(tasks, 1):
        if not isinstance(task, dict):
            raise DataFormatError(f"{path}: task {index} is not an object")
        post = _post(task, f"{path}: task {task.get('id', index)}", use_predictions, stats)
        if post is not None:
            posts.append(post)
    for problem in stats.problems:
        logger.warning("%s", problem)
    logger.info("%s: %d tasks, %d reviewed, %d from predictions, %d unlabelled (left out), %d regions left out",
                path, stats.tasks, stats.annotated, stats.from_predictions, stats.unlabelled, stats.bad_regions)
    return posts, stats


def split_holdout(posts: Sequence[ReviewedPost], fraction: float, seed: int) -> tuple[list[ReviewedPost],
                                                                                        list[ReviewedPost]]:
    """Seeded split into (train, held-out): `round(fraction * n)` posts held out, at least one training post."""
    if not 0 <= fraction < 1:
        raise UsageError(f"--holdout must be in [0, 1), got {fraction}")
    order = list(range(len(posts)))
    random.Random(seed).shuffle(order)
    n_out = min(round(fraction * len(posts)), max(0, len(posts) - 1))
    held = set(order[:n_out])
    return ([p for i, p in enumerate(posts) if i not in held], [p for i, p in enumerate(posts) if i in held])


def _image_id(image: str | None) -> str | None:
    """The photo's file name (a Label Studio local-files URL's `d` path, a URL's or a path's last part)."""
    if not image:
        return None
    parsed = urlparse(image)
    path = (parse_qs(parsed.query).get("d") or [parsed.path])[0]
    return Path(path).name or None


def _word_spans(post: ReviewedPost) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """The post's words (mmib's tokenizer) and each region's word span (words it overlaps)."""
    from mmib_cli.text import tokenize

    tokens = tokenize(post.text)
    spans: dict[str, tuple[int, int]] = {}
    for region in post.regions:
        inside = [i for i, t in enumerate(tokens) if t.start < region.end and t.end > region.start]
        if inside:
            spans[region.rid] = (inside[0], inside[-1] + 1)
    return [t.text for t in tokens], spans


def to_sentence(post: ReviewedPost, *, line: int = 0) -> ConllSentence:
    """A reviewed post as a NER sentence: words and BIO tags (an overlapping later region is left out)."""
    words, spans = _word_spans(post)
    tags = ["O"] * len(words)
    for region in sorted(post.regions, key=lambda r: (r.start, r.end)):
        span = spans.get(region.rid)
        if span is None or any(tags[i] != "O" for i in range(*span)):
            logger.warning("task %s: region %r [%d:%d] overlaps another one or no word; left out", post.task,
                           region.rid, region.start, region.end)
            continue
        tags[span[0]] = f"B-{region.label}"
        for i in range(span[0] + 1, span[1]):
            tags[i] = f"I-{region.label}"
    image = _image_id(post.image)
    return ConllSentence(words, tags, Path(image).stem if image else None, line)


def to_mnre(post: ReviewedPost, *, line: int = 0) -> list[MNREInstance]:
    """A reviewed post's relation instances: labelled pairs, plus `None` for predicted pairs the reviewer removed."""
    words, spans = _word_spans(post)
    names = {r.rid: post.text[r.start:r.end] for r in post.regions}
    image = _image_id(post.image) or ""
    pairs = [(h, t, rel) for h, t, rel in post.relations] + [(h, t, "None") for h, t in post.removed]
    return [MNREInstance(words, spans[h], spans[t], names[h], names[t], image, rel, line)
            for h, t, rel in pairs if h in spans and t in spans and spans[h] != spans[t]]
