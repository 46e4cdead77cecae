"""`mmib export`: annotation output → Label Studio tasks with pre-annotations, its labeling config, or CoNLL BIO.

Label Studio tasks (its "Basic Label Studio JSON format" with a ``predictions`` list)::

    {"data": {"text": ..., "image": ..., "post_id": ..., "line": ...},
     "predictions": [{"model_version": "mmib-default@0.3.0", "score": 0.52, "result": [
        {"id": "e0", "from_name": "label", "to_name": "text", "type": "labels", "score": 0.99,
         "value": {"start": 0, "end": 14, "text": "Eileen Collins", "labels": ["PER"]}},
        {"type": "relation", "from_id": "e0", "to_id": "e1", "direction": "right", "labels": ["/per/org/member_of"]}]}]}

Offsets are Unicode code points, as in mmib's output and in Label Studio's Text tag (so ``text[start:end]`` is the
entity's text on both sides). The task ``score`` is the lowest entity or relation score of the post (1.0 when the
model found nothing), so sorting tasks by prediction score puts the doubtful posts first.
"""
from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit
from xml.sax.saxutils import quoteattr

from mmib_cli.choices import Choice
from mmib_cli.console import Progress
from mmib_cli.io.sniff import file_lines_total
from mmib_cli.errors import UsageError
from mmib_cli.io.outputs import (OutputTally, field_mapping, field_objects, field_offset, field_score,
                                 read_output)
from mmib_cli.io.textfile import check_writable, write_text_output
from mmib_cli.workflows.report import LABEL_COLOURS

logger = logging.getLogger(__name__)

__all__ = ["ExportFormat", "ExportOptions", "ExportResult", "ImageRefs", "conll_block_of", "conll_sentence_of",
           "export", "label_config",
           "label_studio_task", "model_relation_labels"]

ENTITY_LABELS = ("PER", "LOC", "ORG", "MISC")
FROM_NAME, TO_NAME, IMAGE_NAME = "label", "text", "image"
"""Tag names of the labeling config; the reader (`data/labelstudio.py`) accepts any names."""
LOCAL_FILES_URL = "/data/local-files/?d="
"""Label Studio's URL prefix for files under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT."""


class ExportFormat(Choice):
    """What `mmib export` writes (`--format`)."""

    LABEL_STUDIO = "label-studio"  # a JSON list of tasks with pre-annotations
    CONLL = "conll"  # word<TAB>BIO tag lines, a blank line after each post (the Twitter-2015/2017 layout)


@dataclass
class ImageRefs:
    """How a record's `image` becomes `data.image`: as written, under a URL prefix, or a local-files URL.

    With `confine` (the default of `mmib export`), a local image path that resolves (`..` and symlinks followed)
    outside the image root (`image_root`, else the input's folder) gives no reference: posts come from the
    internet and may name any file.
    """

    base_dir: Path
    image_root: Path | None = None
    url_prefix: str | None = None
    local_files_root: Path | None = None
    confine: bool = False

    def __post_init__(self) -> None:
        if self.url_prefix and self.local_files_root:
            raise UsageError("give either --image-url-prefix or --local-files-root, not both")
        if self.url_prefix:
            self.url_prefix = normalise_url_prefix(self.url_prefix)

    def reference(self, image: Any) -> str:
        """`data.image` for an output record's image field ("" when the post has none or it cannot be referenced).

        Raises:
            ValueError: the image lies outside the image root (with `confine` or `url_prefix`) or outside
                `local_files_root` (a URL there could not be served, or would point outside the prefix).
        """
        from mmib_cli.io.images import ImageError, resolve_image_path

        if not isinstance(image, str) or not image:
            return ""
        root = Path(self.image_root or self.base_dir)
        try:
            path = resolve_image_path(image, base_dir=self.base_dir, image_root=self.image_root,
                                      confine=self.confine or bool(self.url_prefix))
        except ImageError as exc:
            if exc.error_type == "ImageOutsideRoot":
                raise ValueError(str(exc)) from None
            return image  # a URL: already a reference Label Studio can load
        if self.url_prefix:
            relative = path.relative_to(root.resolve()).as_posix()  # confined above: no `..` is left
            return self.url_prefix + "/" + quote(relative)
        if not self.local_files_root:
            return image
        try:
            relative = path.resolve().relative_to(self.local_files_root.resolve()).as_posix()
        except ValueError:
            raise ValueError(f"image {image!r} resolves to {path}, outside --local-files-root "
                             f"{self.local_files_root}") from None
        return LOCAL_FILES_URL + quote(relative, safe="/")

    def root_note(self) -> str:
        """Where relative image paths were resolved, and the option that changes it (for warnings)."""
        if self.image_root is not None:
            return f"relative image paths resolve against --image-root {self.image_root}"
        return (f"relative image paths resolve against INPUT's folder {self.base_dir}; pass --image-root DIR when "
                "they are relative to another folder, such as the annotated posts' folder")


def normalise_url_prefix(prefix: str) -> str:
    """`--image-url-prefix` checked and normalised: an http(s) URL or an absolute path, its path without `..`,
    `.` or a trailing `/`, no query or fragment (a relative image path appended to it stays under it).

    Raises:
        UsageError: another scheme, a relative path, a query or a fragment.
    """
    parts = urlsplit(prefix.strip())
    if parts.scheme not in ("http", "https", "") or (parts.scheme and not parts.netloc):
        raise UsageError(f"--image-url-prefix {prefix!r}: give an http(s) URL or a path starting with /")
    if not parts.scheme and not parts.path.startswith("/"):
        raise UsageError(f"--image-url-prefix {prefix!r}: give an http(s) URL or a path starting with /")
    if parts.query or parts.fragment or "?" in prefix or "#" in prefix:
        raise UsageError(f"--image-url-prefix {prefix!r}: a prefix has no query (?) or fragment (#)")
    path = posixpath.normpath(unquote(parts.path or "/"))
    path = "" if path in ("/", "//", ".") else quote(path.lstrip("/"), safe="/")
    base = urlunsplit((parts.scheme, parts.netloc, "", "", "")) if parts.scheme else ""
    return f"{base}/{path}" if path else base


@dataclass
class ExportOptions:
    """What `mmib export` takes (see its --help)."""

    input: str
    output: str
    format: ExportFormat = ExportFormat.LABEL_STUDIO
    image_root: str | None = None
    image_url_prefix: str | None = None
    local_files_root: str | None = None
    limit: int | None = None
    force: bool = False
    confine_images: bool = True


@dataclass
class ExportResult:
    """How many records became tasks (or CoNLL sentences) and how many were left out (errors, skipped)."""

    output: str
    exported: int
    left_out: int
    image_problems: int


def _is_annotated(record: dict[str, Any]) -> bool:
    return "error" not in record and "skipped" not in record and isinstance(record.get("text"), str)


def label_studio_task(record: dict[str, Any], *, image: str = "") -> dict[str, Any]:
    """One annotated output record as a Label Studio task with its pre-annotation.

    Relation heads/tails are matched to the record's entities by offsets; a head or tail that is not among them
    (`mmib relations` with given pairs) gets its own region when it has a label, else the triple is left out.
    """
    text = record["text"]
    result: list[dict[str, Any]] = []
    region_of: dict[tuple[int, int], str] = {}
    scores: list[float] = []  # of the exported regions and relations only

    def region(entity: dict[str, Any]) -> str | None:
        start, end, label = field_offset(entity.get("start")), field_offset(entity.get("end")), entity.get("label")
        if start is None or end is None or not start < end <= len(text):
            return None
        if (start, end) in region_of:
            return region_of[(start, end)]
        if not isinstance(label, str):
            return None
        rid = f"e{len(region_of)}"
        region_of[(start, end)] = rid
        item = {"id": rid, "from_name": FROM_NAME, "to_name": TO_NAME, "type": "labels",
                "value": {"start": start, "end": end, "text": text[start:end], "labels": [label]}}
        score = field_score(entity.get("score"))
        if score is not None:
            item["score"] = score
            scores.append(score)
        result.append(item)
        return rid

    entities = field_objects(record.get("entities"))
    for entity in entities:
        region(entity)
    relations = [r for r in field_objects(record.get("relations")) if r.get("relation") != "None"]
    for rel in relations:
        head, tail = region(field_mapping(rel.get("head"))), region(field_mapping(rel.get("tail")))
        if head and tail:
            result.append({"type": "relation", "from_id": head, "to_id": tail, "direction": "right",
                           "labels": [str(rel.get("relation"))]})
            scores += [score] if (score := field_score(rel.get("score"))) is not None else []
    data = {"text": text, "image": image, "post_id": record.get("id"), "line": record.get("line")}
    return {"data": data, "predictions": [{"model_version": str(record.get("model", "mmib")),
                                           "score": min(scores) if scores else 1.0, "result": result}]}


def conll_sentence_of(record: dict[str, Any]) -> Any:
    """The `ConllSentence` an annotated record is exported as, exactly as `read_conll` reads it back.

    Raises:
        ValueError: the record cannot be written so that it reads back the same (damaged tokens or tags, a word
            that would read as a header, an image name with whitespace or control characters; see
            `data.writers`).
    """
    from mmib_cli.data.conll import ConllSentence
    from mmib_cli.data.writers import conll_sentence

    tokens, tags = record.get("tokens") or [], record.get("bio") or []
    where = f"line {record.get('line')}"
    if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags):
        raise ValueError(f"{where}: tokens and BIO tags must be lists of one length")
    if not tokens:
        raise ValueError(f"{where}: no words (a CoNLL sentence needs at least one)")
    words = [str(t.get("text", "")) if isinstance(t, dict) else str(t) for t in tokens]
    image = Path(record["image"]).stem if isinstance(record.get("image"), str) else None
    line = record.get("line") if isinstance(record.get("line"), int) else 0
    try:
        return conll_sentence(ConllSentence(words, list(tags), image, line))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def conll_block_of(record: dict[str, Any]) -> str:
    """One annotated record in the CoNLL layout `mmib train ner` reads (`IMGID:<photo stem>` when it has a photo).

    Raises:
        ValueError: see `conll_sentence_of`.
    """
    from mmib_cli.data.writers import conll_block

    return conll_block(conll_sentence_of(record))


def export(opts: ExportOptions) -> ExportResult:
    """Convert an annotation output file; error and skipped records are left out (counted in the result).

    Raises:
        OutputExists: the output exists and `opts.force` is not set.
        ValueError: conflicting image options.
        OSError: the input cannot be read or the output cannot be written.
    """
    fmt = ExportFormat.parse(opts.format, what="--format")
    check_writable(opts.output, force=opts.force, inputs=[opts.input])
    base_dir = Path.cwd() if opts.input == "-" else Path(opts.input).resolve().parent
    refs = ImageRefs(base_dir, Path(opts.image_root) if opts.image_root else None, opts.image_url_prefix,
                     Path(opts.local_files_root) if opts.local_files_root else None, confine=opts.confine_images)
    items: list[Any] = []
    left_out = problems = 0
    tally = OutputTally()
    with Progress(f"mmib export: {fmt}", total=file_lines_total(opts.input, opts.limit), unit="lines") as progress:
        for record in tally.watch(progress.iterate(read_output(opts.input, limit=opts.limit))):
            if not _is_annotated(record):
                left_out += 1
                continue
            if fmt is ExportFormat.CONLL:
                try:
                    items.append(conll_block_of(record))
                except ValueError as exc:  # a damaged record: left out and counted, the rest is still exported
                    logger.warning("%s; left out", exc)
                    left_out += 1
                continue
            try:
                image = refs.reference(record.get("image"))
            except ValueError as exc:
                problems += 1
                if problems <= 5:
                    logger.warning("line %s: %s; data.image left empty", record.get("line"), exc)
                image = ""
            items.append(label_studio_task(record, image=image))
    tally.check(opts.input, "export")
    if problems:
        logger.warning("%d posts have an empty data.image (%s)", problems, refs.root_note())
    text = "".join(items) if fmt is ExportFormat.CONLL else json.dumps(items, ensure_ascii=False, indent=1) + "\n"
    write_text_output(opts.output, text, force=opts.force, inputs=[opts.input])
    logger.info("%s: %d posts exported as %s, %d error/skipped records left out", opts.output, len(items), fmt,
                left_out)
    return ExportResult(opts.output, len(items), left_out, problems)


def model_relation_labels(model: str, *, online: bool | None = None) -> list[str]:
    """The relation labels (without `None`) of a checkpoint's RE part, read from its config (no weights loaded).

    A checkpoint without an RE part gives the 22 MNRE relations.
    """
    from mmib_cli.storage import read_bundle, read_config, resolve_model
    from mmib_cli.model.configuration import RE_LABELS

    path = resolve_model(model, online=online).path
    parts = read_bundle(path) or {"main": path}
    for part in parts.values():
        config = read_config(part)
        if config.get("task") == "re":
            return [label for label in config.get("labels") or RE_LABELS if label != "None"]
    return [label for label in RE_LABELS if label != "None"]


def label_config(relations: Iterable[str], *, entity_labels: Iterable[str] = ENTITY_LABELS) -> str:
    """The Label Studio labeling config matching `label_studio_task`: Relations, Labels, Text and Image."""
    rel_lines = "\n".join(f"    <Relation value={quoteattr(r)}/>" for r in relations)
    ent_lines = "\n".join(f"    <Label value={quoteattr(label)} "
                          f"background={quoteattr(LABEL_COLOURS.get(label, '#ddd'))}/>" for label in entity_labels)
    return (f'<View>\n  <Relations>\n{rel_lines}\n  </Relations>\n'
            f'  <Labels name="{FROM_NAME}" toName="{TO_NAME}">\n{ent_lines}\n  </Labels>\n'
            f'  <Text name="{TO_NAME}" value="$text"/>\n'
            f'  <Image name="{IMAGE_NAME}" value="$image" maxWidth="480px"/>\n</View>\n')
