"""The HTML report is one self-contained file: tables and figures (base64 PNG data URIs) inline,
no network asset. Where Chromium is installed (CI installs it) the report is opened headless: the
rendered DOM must hold the tables and the decoded figures, and a screenshot must not be blank."""

from __future__ import annotations

import base64
import html as html_lib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from test_report import RUN_INFO, grid
from harness.report.writer import write_report

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


# --- headless Chromium ----------------------------------------------------------------------
# The report carries no script; the DOM check injects one into a *copy* of it, which records
# after the load event what the browser actually rendered: visible tables, and images that
# decoded (complete, with their natural size).
CHECK_SCRIPT = """<script>window.addEventListener('load', () => {
  const visible = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const imgs = [...document.images];
  document.body.setAttribute('data-check', JSON.stringify({
    tables: [...document.querySelectorAll('table')].filter(visible).length,
    rows: document.querySelectorAll('table tbody tr').length,
    images: imgs.map(i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0,
                            width: i.naturalWidth, height: i.naturalHeight, shown: visible(i)}))}));
});</script>"""
CHROMIUM_TIMEOUT = 90  # seconds; the whole process group is killed past it


def _chromium(*args: str, profile: Path) -> str:
    """Run headless Chromium in its own process group; kill the group (renderer, GPU and
    zygote helpers included) if it outlives the timeout, so that a hung browser cannot hang
    the test run. Returns stdout."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT}s: {' '.join(cmd)}")
    finally:
        try:  # helpers left behind by a finished browser
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, stderr[-2000:]
    return stdout


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    return width, height


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (CI installs it)")
def test_html_renders_tables_and_figures_in_headless_chromium(html_report, tmp_path):
    text = html_report.read_text()
    probe = tmp_path / "report.html"
    probe.write_text(text.replace("</body>", CHECK_SCRIPT + "\n</body>", 1))
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(),
                    profile=tmp_path / "profile")
    match = re.search(r'<body data-check="([^"]+)"', dom)
    assert match, "the load-event check did not run: " + dom[:500]
    check = json.loads(html_lib.unescape(match.group(1)))
    assert check["tables"] == text.count("<table>") >= 8
    assert check["rows"] == text.count("<tr>") - text.count("<thead><tr>") > 0
    for heading in ("Main results", "Paired comparison", "Per-class PQ", "Per-tissue mPQ", "Provenance"):
        assert heading in dom
    embedded = dict(re.findall(r'<img alt="(\w+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text))
    assert {i["alt"] for i in check["images"]} == set(embedded) == {"bars", "fractions", "loss"}
    for img in check["images"]:
        assert img["loaded"] and img["shown"], img
        assert (img["width"], img["height"]) == _png_size(base64.b64decode(embedded[img["alt"]]))


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (CI installs it)")
def test_html_screenshot_in_headless_chromium_is_not_blank(html_report, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    _chromium("--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}",
              html_report.as_uri(), profile=tmp_path / "profile")
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2400)
    pixels = np.asarray(image)
    inked = (pixels.min(axis=2) < 200).mean()  # text, table borders, figure bars
    colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    assert inked > 0.01 and colours > 50, (inked, colours)  # a rendered page, not a blank one
