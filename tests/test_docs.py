"""Every ```` ```python ```` block of the plugin guide runs (each in a fresh namespace, in
order); blocks that are excerpts say so with ```` ```python no-run ````; a block marked
```` ```python module=NAME ```` becomes the module NAME that later blocks import (a plugin's
registered module and its networks' module). The example plugin package imports without torch."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)


def blocks(path: Path) -> list[tuple[int, str, str]]:
    text = path.read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(1).strip(), m.group(2))
            for m in FENCE.finditer(text)]


PAGES = ["writing-plugins.md"]
CASES = [(page, line, info, code) for page in PAGES for line, info, code in blocks(DOCS / page)
         if info == "python" or info.startswith("python module=")]


def test_every_python_block_is_run_or_marked():
    infos = {info for page in PAGES for _, info, _ in blocks(DOCS / page)
             if info.startswith("python")}
    assert all(i in ("python", "python no-run") or re.fullmatch(r"python module=\w+", i)
               for i in infos), infos
    assert len(CASES) >= 5


def _define_module(page: str, line: int, info: str, code: str) -> None:
    module = types.ModuleType(info.split("=", 1)[1])
    sys.modules[module.__name__] = module
    exec(compile(code, f"{DOCS / page}:{line}", "exec"), module.__dict__)


@pytest.mark.parametrize("page,line,info,code", CASES, ids=[f"{p}:{n}" for p, n, _, _ in CASES])
def test_python_block_runs(page, line, info, code):
    """Each block runs as a reader runs the page: the ``python module=NAME`` blocks above it
    are defined first (a later block imports them), so a block also passes alone, e.g. in
    another pytest-xdist worker than the block that defines its module."""
    for p, earlier, i, c in CASES:
        if p == page and earlier < line and i.startswith("python module=") \
                and i.split("=", 1)[1] not in sys.modules:
            _define_module(p, earlier, i, c)
    if info.startswith("python module="):
        _define_module(page, line, info, code)
    else:
        exec(compile(code, f"{DOCS / page}:{line}", "exec"), {"__name__": f"docs_block_{line}"})


EXAMPLE = DOCS.parent / "examples" / "harness-example-plugin"


def test_example_plugin_imports_no_torch():
    """What `harness list`/`validate` do to every installed plugin: import its entry-point
    modules. The example package follows the guide's rule, so none of them loads torch."""
    modules = sorted(p.stem for p in (EXAMPLE / "harness_example").glob("*.py")
                     if p.stem != "__init__" and not p.stem.endswith("_model"))
    code = (f"import sys; sys.path.insert(0, {str(EXAMPLE)!r}); import importlib\n"
            f"for m in {modules!r}: importlib.import_module('harness_example.' + m)\n"
            "heavy = sorted({'torch', 'torchvision', 'timm', 'kornia', 'scipy'} & set(sys.modules))\n"
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert modules == ["blobs", "blur", "byol", "fm", "halves"], modules


def test_guide_registered_modules_import_no_torch():
    """The guide's own plugin modules (its `python module=NAME` blocks, but the networks'
    `*_nets`) follow its rule: executed alone, they leave torch unimported."""
    modules = [code for page in PAGES for _, info, code in blocks(DOCS / page)
               if info.startswith("python module=") and not info.endswith("_nets")]
    assert len(modules) >= 2
    for code in modules:
        check = f"import sys\nexec({code!r}, {{'__name__': 'guide_module'}})\n" \
                "assert 'torch' not in sys.modules, 'torch imported'"
        result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, (code[:200], result.stderr[-1500:])
