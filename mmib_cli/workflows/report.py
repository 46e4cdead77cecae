"""`mmib report`: one self-contained, offline HTML page to review an annotation output (see README "Review").

The page holds the summary charts (inline SVG, built here), the selected records as JSON in a
``<script type="application/json">`` block, photo thumbnails as ``data:`` URIs (one per distinct image), and the
CSS/JS of ``templates/report.html``. The script renders one page of posts at a time with DOM APIs only
(``textContent``, never ``innerHTML`` with post data), so text or ids holding HTML or script stay inert.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from mmib_cli.console import Progress
from mmib_cli.io.sniff import file_lines_total
from mmib_cli.io.outputs import (OutputTally, field_mapping, field_objects, field_offset, field_score,
                                 read_output)
from mmib_cli.io.safefile import display_path
from mmib_cli.io.textfile import check_writable, write_text_output

logger = logging.getLogger(__name__)

__all__ = ["ReportOptions", "ReportResult", "Summary", "build_report", "render_report", "select_records",
           "thumbnail_uri"]

LABEL_COLOURS = {"PER": "#f4a3a3", "LOC": "#9fd5a8", "ORG": "#9cc3f0", "MISC": "#f2d58b"}
"""Highlight colour per entity type (others get a grey)."""

_HIST_BINS = 10
_TOP = 10


@dataclass
class ReportOptions:
    """What `mmib report` takes (see its --help)."""

    input: str
    output: str
    image_root: str | None = None
    limit: int | None = None
    sample: int | None = None
    seed: int = 0
    thumb_size: int = 160
    page_size: int = 50
    title: str | None = None
    force: bool = False
    confine_images: bool = True


@dataclass
class Summary:
    """Counts over every record read (before sampling)."""

    posts: int = 0
    annotated: int = 0
    errors: Counter = field(default_factory=Counter)
    skipped: int = 0
    entity_labels: Counter = field(default_factory=Counter)
    relation_labels: Counter = field(default_factory=Counter)
    top_entities: Counter = field(default_factory=Counter)
    score_bins: list[int] = field(default_factory=lambda: [0] * _HIST_BINS)
    models: Counter = field(default_factory=Counter)

    def add(self, record: dict[str, Any]) -> None:
        """Count one output record (annotated, error or skipped)."""
        self.posts += 1
        if "error" in record:
            self.errors[str(field_mapping(record["error"]).get("type", "Error"))] += 1
            return
        if "skipped" in record:
            self.skipped += 1
            return
        self.annotated += 1
        if record.get("model"):
            self.models[str(record["model"])] += 1
        for ent in _entities(record):
            self.entity_labels[ent["label"]] += 1
            self.top_entities[(str(ent.get("text", "")), ent["label"])] += 1
            score = field_score(ent.get("score"))
            if score is not None:
                self.score_bins[min(_HIST_BINS - 1, int(score * _HIST_BINS))] += 1
        for rel in field_objects(record.get("relations")):
            self.relation_labels[str(rel.get("relation"))] += 1


@dataclass
class ReportResult:
    """Outcome of `build_report`: where the page is and what it shows."""

    output: Path
    summary: Summary
    shown: int
    thumbnails: int
    image_problems: int


def _entities(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in field_objects(record.get("entities")) if isinstance(e.get("label"), str) and e["label"]]


def select_records(records: Iterable[dict[str, Any]], summary: Summary, *, sample: int | None = None,
                   seed: int = 0) -> list[dict[str, Any]]:
    """Count every record into `summary` and keep all of them, or a seeded uniform sample of `sample` (file order).

    Memory stays bounded by the sample size (reservoir sampling), whatever the file size.
    """
    if sample is None:
        kept = []
        for record in records:
            summary.add(record)
            kept.append(record)
        return kept
    rng = random.Random(seed)
    reservoir: list[tuple[int, dict[str, Any]]] = []
    for index, record in enumerate(records):
        summary.add(record)
        if len(reservoir) < sample:
            reservoir.append((index, record))
        else:
            slot = rng.randrange(index + 1)
            if slot < sample:
                reservoir[slot] = (index, record)
    return [record for _, record in sorted(reservoir, key=lambda item: item[0])]


def thumbnail_uri(path: Path, size: int) -> str:
    """A JPEG thumbnail (longest side `size` px) of an image file as a ``data:`` URI.

    Raises:
        ImageError: the file is missing, unreadable or too large (see ``open_thumbnail``).
    """
    from mmib_cli.io.images import open_thumbnail

    image = open_thumbnail(path, size)  # memory-bounded: shrunk before any conversion, huge pictures refused
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=70, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class _Thumbnails:
    """Thumbnails by resolved path, each made once; failures are remembered as their message."""

    def __init__(self, base_dir: Path, image_root: Path | None, size: int, *, confine: bool = True) -> None:
        self.base_dir, self.image_root, self.size, self.confine = base_dir, image_root, size, confine
        self.uris: list[str] = []
        self.index: dict[str, int] = {}
        self.problems: dict[str, str] = {}

    def key(self, image: Any) -> tuple[int | None, str | None]:
        """(index into `uris`, problem) for an output record's image field."""
        from mmib_cli.io.images import ImageError, resolve_image_path

        if not isinstance(image, str) or not image or self.size <= 0:
            return None, None
        try:
            path = str(resolve_image_path(image, base_dir=self.base_dir, image_root=self.image_root,
                                          confine=self.confine))
        except ImageError as exc:  # a URL, or a path out of the image root: counted like an unreadable picture
            self.problems.setdefault(image, str(exc))
            return None, str(exc)
        if path not in self.index and path not in self.problems:
            try:
                self.uris.append(thumbnail_uri(Path(path), self.size))
                self.index[path] = len(self.uris) - 1
            except ImageError as exc:
                self.problems[path] = str(exc)
        return (self.index[path], None) if path in self.index else (None, self.problems[path])


def _view(record: dict[str, Any], thumbs: _Thumbnails) -> dict[str, Any]:
    """The compact form of one record the page script reads."""
    text = record.get("text")
    view: dict[str, Any] = {"id": _plain(record.get("id")), "line": field_offset(record.get("line")),
                            "text": text if isinstance(text, str) else ""}
    if "error" in record:
        error = record["error"]
        details = error if isinstance(error, dict) else {"message": error}
        view["error"] = {"type": _plain(details.get("type", "Error")), "message": _plain(details.get("message", ""))}
        return view
    if "skipped" in record:
        skipped = record["skipped"]
        view["skipped"] = _plain(skipped.get("reason", "") if isinstance(skipped, dict) else skipped)
        return view
    entities = [{"label": _plain(e["label"]), "start": field_offset(e.get("start")),
                 "end": field_offset(e.get("end")), "text": _plain(e.get("text", "")),
                 "score": field_score(e.get("score"))} for e in _entities(record)]
    index = {(e["start"], e["end"]): i for i, e in enumerate(entities)}
    relations = []
    for rel in field_objects(record.get("relations")):
        head, tail = field_mapping(rel.get("head")), field_mapping(rel.get("tail"))
        relations.append({"relation": _plain(rel.get("relation")), "score": field_score(rel.get("score")),
                          "head": _plain(head.get("text", "")), "tail": _plain(tail.get("text", "")),
                          "h": index.get((field_offset(head.get("start")), field_offset(head.get("end")))),
                          "t": index.get((field_offset(tail.get("start")), field_offset(tail.get("end"))))})
    view.update(entities=entities, relations=relations, image_used=bool(record.get("image_used")))
    thumb, problem = thumbs.key(record.get("image"))
    if isinstance(record.get("image"), str):
        view["image"] = record["image"]
    if thumb is not None:
        view["thumb"] = thumb
    problem = problem or record.get("image_error")
    if problem:
        view["image_problem"] = _plain(problem)
    scores = [x["score"] for x in entities + relations if x["score"] is not None]
    view["min_score"] = min(scores) if scores else None
    return view


def _plain(value: Any) -> Any:
    """Strings and numbers as they are, anything else as its JSON text (the page shows text only)."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _script_json(value: Any) -> str:
    """JSON safe to place inside a <script> element: no `<`, `>`, `&` or line separators left unescaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


_LABEL_CHARS = 60
"""Chart labels longer than this are shortened (the full label is in the bar's tooltip)."""


def _bar_chart(title: str, counts: list[tuple[str, int]], *, colour: str | None = None) -> str:
    """A horizontal bar chart as inline SVG (labels escaped), its label column as wide as its longest label."""
    esc = html.escape
    if not counts:
        return f'<figure class="chart"><figcaption>{esc(title)}</figcaption><p class="none">none</p></figure>'
    top = max(n for _, n in counts) or 1
    shorts = [label if len(label) <= _LABEL_CHARS else label[: _LABEL_CHARS - 1] + "…" for label, _ in counts]
    row, bar_w = 18, 170
    label_w = 12 + 7 * max(len(short) for short in shorts)  # about 7 px per character at 11 px
    number_w = 10 + 7 * len(str(top))
    parts = [f'<svg role="img" aria-label="{esc(title)}" width="{label_w + bar_w + number_w}" '
             f'height="{row * len(counts) + 4}" xmlns="http://www.w3.org/2000/svg">']
    for i, ((label, n), short) in enumerate(zip(counts, shorts)):
        y = i * row + 2
        fill = colour or LABEL_COLOURS.get(label, "#c8c8c8")
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{esc(short)}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{max(1, round(bar_w * n / top))}" height="{row - 4}" '
                     f'fill="{fill}"><title>{esc(label)}: {n}</title></rect>'
                     f'<text x="{label_w + round(bar_w * n / top) + 4}" y="{y + 12}">{n}</text>')
    parts.append("</svg>")
    return f'<figure class="chart"><figcaption>{esc(title)}</figcaption>{"".join(parts)}</figure>'


def _histogram(title: str, bins: list[int]) -> str:
    """Entity score histogram (10 bins over [0, 1]) as inline SVG, each bar with its count above it."""
    top, width, height, head = max(bins) or 1, 30, 90, 14
    parts = [f'<svg role="img" aria-label="{html.escape(title)}" width="{width * len(bins) + 10}" '
             f'height="{head + height + 18}" xmlns="http://www.w3.org/2000/svg">']
    for i, n in enumerate(bins):
        h = round(height * n / top)
        x = i * width + 5
        parts.append(f'<rect x="{x}" y="{head + height - h}" width="{width - 3}" height="{h}" fill="#7a9cc6" '
                     f'data-bin="{i}" data-count="{n}"><title>{i / len(bins):.1f}–{(i + 1) / len(bins):.1f}: {n}'
                     '</title></rect>')
        if n:
            parts.append(f'<text class="count" x="{x + (width - 3) / 2:g}" y="{head + height - h - 3}" '
                         f'text-anchor="middle">{n}</text>')
    parts.append(f'<text x="5" y="{head + height + 14}">0</text>'
                 f'<text x="{width * len(bins) / 2 + 5:g}" y="{head + height + 14}" text-anchor="middle">score</text>'
                 f'<text x="{width * len(bins) + 5}" y="{head + height + 14}" text-anchor="end">1</text></svg>')
    return f'<figure class="chart"><figcaption>{html.escape(title)}</figcaption>{"".join(parts)}</figure>'


def _summary_html(summary: Summary, shown: int) -> str:
    esc = html.escape
    errors = sum(summary.errors.values())
    facts = [("posts", summary.posts), ("annotated", summary.annotated), ("errors", errors),
             ("skipped", summary.skipped), ("entities", sum(summary.entity_labels.values())),
             ("relations", sum(summary.relation_labels.values())), ("shown", shown)]
    stats = "".join(f'<div class="stat" data-stat="{k}"><b>{v}</b><span>{k}</span></div>' for k, v in facts)
    models = ", ".join(esc(m) for m, _ in summary.models.most_common())
    charts = [
        _bar_chart("Entities per type", summary.entity_labels.most_common()),
        _bar_chart("Relations per type", summary.relation_labels.most_common(_TOP), colour="#b9a3e3"),
        _bar_chart("Errors by type", summary.errors.most_common(), colour="#e39a9a"),
        _histogram("Entity scores", summary.score_bins),
        _bar_chart("Top entities", [(f"{text} ({label})", n) for (text, label), n in
                                    summary.top_entities.most_common(_TOP)], colour="#a8c8b0"),
    ]
    model_line = f'<p class="model">model: {models}</p>' if models else ""
    return f'<div class="stats">{stats}</div>{model_line}<div class="charts">{"".join(charts)}</div>'


def render_report(views: list[dict[str, Any]], thumbs: list[str], summary: Summary, *, title: str,
                  page_size: int = 50) -> str:
    """The complete HTML page for already-built record views, thumbnails (data: URIs) and summary.

    The page's Content-Security-Policy allows only its own script (by sha256) and data: images, so even markup
    that slipped into the page could neither run script nor load anything from a network.
    """
    templates = resources.files("mmib_cli").joinpath("templates")
    page = templates.joinpath("report.html").read_text(encoding="utf-8")
    script = templates.joinpath("report.js").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    data = {"records": views, "thumbs": thumbs, "colours": LABEL_COLOURS, "pageSize": page_size}
    parts = re.split(r"(\{\{[A-Z_]+\}\})", page)  # fill each placeholder once: inserted text is never rescanned
    values = {"{{TITLE}}": html.escape(title), "{{SUMMARY}}": _summary_html(summary, len(views)),
              "{{DATA}}": _script_json(data), "{{SCRIPT}}": script, "{{SCRIPT_HASH}}": f"sha256-{digest}"}
    return "".join(values.get(part, part) for part in parts)


def _warn_image_problems(thumbs: _Thumbnails, opts: ReportOptions) -> None:
    """One warning naming where relative image paths were looked for and the option that changes it, then the
    first few problems."""
    if not thumbs.problems:
        return
    if opts.image_root:
        where = f"relative image paths resolve against --image-root {opts.image_root}"
    else:
        where = (f"relative image paths resolve against INPUT's folder {thumbs.base_dir}; pass --image-root DIR "
                 "when they are relative to another folder, such as the annotated posts' folder")
    logger.warning("%d photos have no thumbnail (%s)", len(thumbs.problems), where)
    for path, problem in list(thumbs.problems.items())[:5]:
        logger.warning("no thumbnail for %s: %s", path, problem)


def build_report(opts: ReportOptions) -> ReportResult:
    """Read an annotation output, select records, make thumbnails and write the HTML page atomically.

    Raises:
        OutputExists: the output exists and `opts.force` is not set.
        OSError: the input cannot be read or the output cannot be written.
    """
    out = Path(opts.output)
    check_writable(out, force=opts.force, inputs=[opts.input])
    summary = Summary()
    tally = OutputTally()
    with Progress("mmib report: reading", total=file_lines_total(opts.input, opts.limit), unit="lines") as progress:
        records = select_records(tally.watch(progress.iterate(read_output(opts.input, limit=opts.limit))), summary,
                                 sample=opts.sample, seed=opts.seed)
    tally.check(opts.input, "report")
    base_dir = Path.cwd() if opts.input == "-" else Path(opts.input).resolve().parent
    thumbs = _Thumbnails(base_dir, Path(opts.image_root) if opts.image_root else None, opts.thumb_size,
                         confine=opts.confine_images)
    with Progress("mmib report: posts and photos", total=len(records)) as progress:
        views = [_view(record, thumbs) for record in progress.iterate(records)]
    title = opts.title or f"mmib report: {display_path(Path(opts.input).name)}"
    page = render_report(views, thumbs.uris, summary, title=title, page_size=opts.page_size)
    write_text_output(out, page, force=opts.force, inputs=[opts.input])
    _warn_image_problems(thumbs, opts)
    logger.info("report %s: %d of %d posts shown, %d thumbnails", display_path(out), len(views), summary.posts,
                len(thumbs.uris))
    return ReportResult(out, summary, len(views), len(thumbs.uris), len(thumbs.problems))
