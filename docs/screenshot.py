"""Regenerate docs/report.png: the README's review commands on the samples, shot in headless Debian Chromium.

    python docs/screenshot.py            # needs chromium (apt-get install chromium) and playwright

Runs from a temporary copy of samples/, exactly as the README's "Review and correct" section does.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update"]


def main() -> None:
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("MMIB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(REPO / "samples", work / "samples")
        mmib = [sys.executable, "-m", "mmib_cli", "-q"]
        subprocess.run([*mmib, "annotate", "samples/posts.jsonl", "-o", "review.jsonl", "--relations"], cwd=work,
                       check=True)
        subprocess.run([*mmib, "report", "review.jsonl", "-o", "report.html", "--image-root", "samples"], cwd=work,
                       check=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto((work / "report.html").as_uri())
            page.wait_for_selector("article.post")
            page.screenshot(path=str(REPO / "docs" / "report.png"))
            browser.close()
    print(REPO / "docs" / "report.png")


if __name__ == "__main__":
    main()
