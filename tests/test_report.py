"""`mmib report`: the HTML review page (library, command, and in a real headless Chromium when one is installed)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli_helpers import invoke, write_jsonl
from mmib_cli.workflows.report import ReportOptions, Summary, build_report, select_records

HOSTILE_TEXT = "<img src=x onerror=window.__pwned=1> </script><script>window.__pwned=1</script> Obama"
HOSTILE_ID = "<script>window.__pwned=1</script>"


def _entity(text: str, full: str, label: str, score: float) -> dict:
    start = full.index(text)
    return {"text": text, "label": label, "start": start, "end": start + len(text), "score": score}


def _post(line: int, text: str, ents: list[tuple[str, str, float]], *, rels: list[tuple[int, int, str]] = (),
          image: str | None = None, id_: object = None) -> dict:
    entities = [_entity(t, text, label, s) for t, label, s in ents]
    relations = [{"head": entities[h], "tail": entities[t], "relation": r, "score": 0.8} for h, t, r in rels]
    record = {"id": id_ if id_ is not None else f"p{line}", "line": line, "text": text, "entities": entities,
              "relations": relations, "image_used": False, "model": "tiny@0"}
    if image:
        record["image"] = image
    return record


@pytest.fixture()
def output_file(tmp_path, sample_images) -> Path:
    """An annotate-style output: entities (after an emoji), relations, a photo, an error, a skip, hostile posts."""
    rows = [
        _post(1, "Kawhi Leonard 🚀 joins the Clippers in Los Angeles",
              [("Kawhi Leonard", "PER", 0.98), ("Clippers", "ORG", 0.61), ("Los Angeles", "LOC", 0.9)],
              rels=[(0, 1, "/per/org/member_of")], image=sample_images["red"].name),
        _post(2, HOSTILE_TEXT, [("Obama", "PER", 0.2)]),
        _post(3, "Chelsea beat Arsenal", [("Chelsea", "ORG", 0.7), ("Arsenal", "ORG", 0.5)], id_=HOSTILE_ID,
              image="missing.jpg"),
        {"id": "p4", "line": 4, "error": {"type": "InvalidJSON", "message": "line 4: <b>not</b> JSON"}},
        {"id": "p5", "line": 5, "text": "lost photo", "skipped": {"reason": "image not found: x.jpg"}},
        "{broken json line",
    ]
    path = write_jsonl(sample_images["red"].parent / "out.jsonl", rows)
    yield path
    path.unlink()


def _entity_count(path: Path) -> int:
    return sum(len(json.loads(line).get("entities", [])) for line in path.read_text().splitlines()
               if line.startswith("{\""))


def test_report_embeds_escaped_data_photos_and_summary(output_file, tmp_path):
    out = tmp_path / "report.html"
    result = build_report(ReportOptions(input=str(output_file), output=str(out)))
    page = out.read_text(encoding="utf-8")
    assert result.summary.posts == 6 and result.summary.annotated == 3
    assert result.summary.errors == {"InvalidJSON": 2} and result.summary.skipped == 1
    assert result.thumbnails == 1 and result.image_problems == 1  # red.jpg next to the output; missing.jpg absent
    assert page.count("data:image/jpeg;base64,") == 1
    # nothing from a post appears as markup: the only <script> elements are the page's own two
    assert len(re.findall(r"<script\b", page, flags=re.I)) == 2
    assert "</script><script>window" not in page and "<img src=x" not in page and "<b>not</b>" not in page
    data = re.search(r'<script type="application/json" id="mmib-data">(.*?)</script>', page, re.S).group(1)
    records = json.loads(data)["records"]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[1]["text"] == HOSTILE_TEXT and records[2]["id"] == HOSTILE_ID
    assert records[0]["min_score"] == 0.61 and records[3]["error"]["type"] == "InvalidJSON"
    assert 'data-stat="entities"><b>6</b>' in page and "/per/org/member_of" in page
    assert "<svg" in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # offline


DAMAGED = [  # a hand-edited or concatenated output: every field may hold the wrong kind of value
    {"id": 1, "line": 1, "error": "not an object"},
    {"id": 2, "line": "two", "skipped": 5},
    {"id": 3, "line": 3, "text": "Obama met Merkel", "tokens": 5, "bio": 7,
     "entities": [{"text": "Obama", "label": "PER", "start": 0, "end": 5, "score": 0.4},
                  {"text": "x", "label": 5, "start": 0, "end": 1, "score": 0.1},
                  {"text": "Merkel", "label": "PER", "start": "a", "end": None, "score": True},
                  {"text": "met", "label": "MISC", "start": 6, "end": 9, "score": 7}],
     "relations": [{"head": 5, "tail": None, "relation": 7, "score": "s"},
                   {"head": {"start": 0, "end": 5}, "tail": [], "relation": "/per/per/peer", "score": 0.3}]},
    5,
    None,
]


def test_report_and_export_survive_damaged_records(tmp_path):
    """Wrong kinds of values in any field never stop `report` or `export`: bad entities, scores and offsets are
    left out, and only valid scores (numbers in [0, 1]) count."""
    source = tmp_path / "damaged.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in DAMAGED) + "\n", encoding="utf-8")
    out = tmp_path / "report.html"
    result = build_report(ReportOptions(input=str(source), output=str(out)))
    assert (result.summary.posts, result.summary.annotated, result.summary.skipped) == (5, 1, 1)
    assert sum(result.summary.errors.values()) == 3 and result.summary.entity_labels == {"PER": 2, "MISC": 1}
    assert sum(result.summary.score_bins) == 1  # only 0.4 is a score
    data = re.search(r'id="mmib-data">(.*?)</script>', out.read_text(encoding="utf-8"), re.S).group(1)
    post = [r for r in json.loads(data)["records"] if r.get("text")][0]
    assert post["min_score"] == 0.3 and [e["start"] for e in post["entities"]] == [0, None, 6]
    for fmt in ("label-studio", "conll"):
        result = invoke("export", source, "--format", fmt, "-o", tmp_path / f"out.{fmt}")
        assert result.exit_code == 0, result.output
    task = json.loads((tmp_path / "out.label-studio").read_text())[0]
    assert task["predictions"][0]["score"] == 0.4
    assert [r["value"]["text"] for r in task["predictions"][0]["result"]] == ["Obama", "met"]


def test_report_image_root_and_no_thumbnails(output_file, tmp_path, sample_images):
    moved = tmp_path / "elsewhere.jsonl"
    moved.write_bytes(output_file.read_bytes())
    assert build_report(ReportOptions(input=str(moved), output=str(tmp_path / "a.html"))).thumbnails == 0
    rooted = build_report(ReportOptions(input=str(moved), output=str(tmp_path / "b.html"),
                                        image_root=str(sample_images["red"].parent)))
    assert rooted.thumbnails == 1
    none = build_report(ReportOptions(input=str(moved), output=str(tmp_path / "c.html"), thumb_size=0,
                                      image_root=str(sample_images["red"].parent)))
    assert none.thumbnails == 0 and "data:image/jpeg" not in (tmp_path / "c.html").read_text()


def test_sample_is_seeded_uniform_and_counts_everything():
    records = [{"id": i, "line": i, "text": "x", "entities": []} for i in range(1, 1001)]
    summary = Summary()
    first = select_records(iter(records), summary, sample=20, seed=3)
    again = select_records(iter(records), Summary(), sample=20, seed=3)
    other = select_records(iter(records), Summary(), sample=20, seed=4)
    assert summary.posts == 1000 and len(first) == 20
    assert first == again and first != other
    assert [r["line"] for r in first] == sorted(r["line"] for r in first)
    assert max(r["line"] for r in first) > 500  # drawn from the whole file, not its head


def test_report_command_limit_sample_and_force(output_file, tmp_path):
    out = tmp_path / "r.html"
    result = invoke("report", output_file, "-o", out, "--limit", "3")
    assert result.exit_code == 0, result.output
    assert '"line":4' not in out.read_text() and '"line":3' in out.read_text()
    refused = invoke("report", output_file, "-o", out)
    assert refused.exit_code == 2 and "--force" in refused.output
    assert invoke("report", output_file, "-o", out, "--sample", "2", "--seed", "1", "-F").exit_code == 0
    data = re.search(r'id="mmib-data">(.*?)</script>', out.read_text(), re.S).group(1)
    assert len(json.loads(data)["records"]) == 2


# ---------------------------------------------------------------------------------------------- real browser


def _chromium() -> str | None:
    import os
    import shutil

    return os.environ.get("MMIB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium driven by playwright; skipped when either is missing."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    if not executable:
        pytest.skip("no chromium executable (apt-get install chromium, or set MMIB_CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


def _open(browser, path: Path):
    page = browser.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(f"{msg.type}: {msg.text}") if msg.type in ("error", "warning")
            else None)
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
    page.goto(path.resolve().as_uri())
    page.wait_for_selector("article.post")
    return page, problems


def test_browser_highlights_filters_and_no_script_runs(browser, output_file, tmp_path):
    out = tmp_path / "report.html"
    build_report(ReportOptions(input=str(output_file), output=str(out)))
    page, problems = _open(browser, out)
    marks = page.locator("[data-entity-label]")
    assert marks.count() == _entity_count(output_file) == 6
    first = page.locator("article.post").first.locator("[data-entity-label]")
    text = "Kawhi Leonard 🚀 joins the Clippers in Los Angeles"
    spans = [(int(first.nth(i).get_attribute("data-start")), int(first.nth(i).get_attribute("data-end")))
             for i in range(first.count())]
    assert [text[s:e] for s, e in spans] == ["Kawhi Leonard", "Clippers", "Los Angeles"]  # code points, past 🚀
    assert first.nth(1).inner_text().startswith("Clippers") and first.nth(1).get_attribute("data-entity-label") \
        == "ORG"
    assert page.locator("[data-relation='/per/org/member_of']").count() == 1
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img").count() == 1  # only the real thumbnail: the post's <img> is text
    assert HOSTILE_TEXT.split(" Obama")[0] in page.locator("article.post").nth(1).inner_text()
    assert HOSTILE_ID in page.locator("article.post").nth(2).inner_text()
    assert page.locator("[data-error='InvalidJSON']").count() == 2 and page.locator("[data-skipped]").count() == 1

    page.select_option("#f-label", "PER")
    assert page.locator("article.post").count() == 2
    page.select_option("#f-label", "")
    page.check("#f-errors")
    assert page.locator("article.post").count() == 3
    page.uncheck("#f-errors")
    page.select_option("#f-order", "confidence")
    assert page.locator("article.post").first.get_attribute("data-line") == "2"  # Obama at 0.2
    assert problems == []
    page.close()


def test_browser_paginates_large_output(browser, tmp_path):
    rows = [_post(i, f"Obama visits Berlin {i}", [("Obama", "PER", 0.9), ("Berlin", "LOC", 0.8)])
            for i in range(1, 2001)]
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    out = tmp_path / "big.html"
    build_report(ReportOptions(input=str(path), output=str(out), page_size=100))
    page, problems = _open(browser, out)
    assert page.locator("article.post").count() == 100  # one page rendered, not 2000 posts
    assert page.locator("[data-entity-label]").count() == 200
    page.click("#next")
    assert page.locator("article.post").first.get_attribute("data-line") == "101"
    assert page.inner_text("#page") == "page 2 / 20" and problems == []
    page.close()


def test_report_and_export_refuse_a_raw_input_with_what_to_do(tmp_path):
    raw = write_jsonl(tmp_path / "posts.jsonl", [{"id": "p1", "text": "Obama visits Berlin", "image": None}] * 3)
    for command, out in (("report", "r.html"), ("export", "t.json")):
        result = invoke(command, raw, "-o", tmp_path / out, expect=2)
        assert "is not an mmib annotate output" in result.stderr and "'text'" in result.stderr
        assert f"mmib annotate {raw} -o out.jsonl, then mmib {command} out.jsonl" in result.stderr
        assert not (tmp_path / out).exists()


def test_score_histogram_shows_counts_and_long_labels_are_not_cut(tmp_path):
    long_name = "The Metropolitan Museum of Art in New York"  # 42 characters: was cut at 24
    text = f"{long_name} and Obama"
    rows = [_post(i, text, [(long_name, "ORG", 0.95), ("Obama", "PER", 0.45)]) for i in range(1, 4)]
    out = tmp_path / "r.html"
    build_report(ReportOptions(input=str(write_jsonl(tmp_path / "out.jsonl", rows)), output=str(out)))
    page = out.read_text(encoding="utf-8")
    histogram = page.split("Entity scores</figcaption>")[1].split("</figure>")[0]
    assert 'data-bin="9" data-count="3"' in histogram and 'data-bin="4" data-count="3"' in histogram
    assert re.findall(r'<text class="count"[^>]*>(\d+)</text>', histogram) == ["3", "3"]
    top = page.split("Top entities</figcaption>")[1].split("</figure>")[0]
    assert f">{long_name} (ORG)</text>" in top


def test_cards_fill_a_wide_window(browser, output_file, tmp_path):
    out = tmp_path / "report.html"
    build_report(ReportOptions(input=str(output_file), output=str(out)))
    page = browser.new_page(viewport={"width": 1920, "height": 1000})
    page.goto(out.resolve().as_uri())
    page.wait_for_selector("article.post")
    boxes = [page.locator("article.post").nth(i).bounding_box() for i in range(page.locator("article.post").count())]
    right = max(box["x"] + box["width"] for box in boxes)
    left = min(box["x"] for box in boxes)
    assert right - left > 0.9 * 1920  # the posts use the window's width (two or more columns), not 1100 px of it
    assert len({round(box["x"]) for box in boxes}) >= 2
    page.close()
