"""The HTML report is one self-contained file: tables and figures (base64 PNG data URIs) inline,
no network asset. Where Chromium is installed it is opened headless and screenshotted."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from test_report import RUN_INFO, grid
from harness.report.tables import write_report

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser",
                             shutil.which("chromium") or "", shutil.which("google-chrome") or "")
                 if p and Path(p).exists()), None)


@pytest.fixture(scope="module")
def html_report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html")
    records = grid({"scratch": [0.30, 0.32, 0.31], "better": [0.40, 0.42, 0.41]})
    records += grid({"scratch": [0.10, 0.12, 0.11], "better": [0.20, 0.22, 0.21]}, fraction=0.1)
    write_report(out, records, RUN_INFO, formats="html")
    return out / "report.html"


def test_html_has_tables_and_embedded_figures(html_report):
    text = html_report.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<style>" in text
    assert text.count("<table>") >= 8  # main, paired, 2 x (overall, per class, per tissue), stages
    assert '<td class="best">' in text and "▲" in text
    for heading in ("Main results", "Paired comparison", "Per-class PQ", "Per-tissue mPQ", "Provenance"):
        assert heading in text
    images = re.findall(r'<img alt="(\w+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert {name for name, _ in images} == {"bars", "fractions", "loss"}
    for _, data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    # self-contained: no external resource of any kind
    assert not re.search(r'(src|href)="(https?:)?//', text) and "<script" not in text
    assert "@import" not in text and "url(" not in text
    assert _unbalanced(text) == []


def _unbalanced(text: str) -> list[str]:
    """Tags closed out of order or never closed (void elements aside)."""
    void = {"meta", "img", "br", "hr", "link", "input"}
    stack, errors = [], []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag not in void:
                stack.append(tag)

        def handle_endtag(self, tag):
            if stack and stack[-1] == tag:
                stack.pop()
            else:
                errors.append(tag)

    Parser().feed(text)
    return errors + stack


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (CI installs it)")
def test_html_opens_in_headless_chromium(html_report, tmp_path):
    shot = tmp_path / "shot.png"
    res = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--hide-scrollbars", "--window-size=1280,2400",
                          f"--screenshot={shot}", html_report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page, not blank
