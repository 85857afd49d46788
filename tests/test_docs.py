"""Every ```` ```python ```` block of the plugin guide runs (each in a fresh namespace, in
order); blocks that are excerpts say so with ```` ```python no-run ````."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)


def blocks(path: Path) -> list[tuple[int, str, str]]:
    text = path.read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(1).strip(), m.group(2))
            for m in FENCE.finditer(text)]


PAGES = ["writing-plugins.md"]
CASES = [(page, line, code) for page in PAGES for line, info, code in blocks(DOCS / page)
         if info == "python"]


def test_every_python_block_is_run_or_marked():
    infos = {info for page in PAGES for _, info, _ in blocks(DOCS / page)
             if info.startswith("python")}
    assert infos <= {"python", "python no-run"}, infos
    assert len(CASES) >= 5


@pytest.mark.parametrize("page,line,code", CASES, ids=[f"{p}:{n}" for p, n, _ in CASES])
def test_python_block_runs(page, line, code):
    exec(compile(code, f"{DOCS / page}:{line}", "exec"), {"__name__": f"docs_block_{line}"})
