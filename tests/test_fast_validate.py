"""``harness validate`` and ``harness list`` import no torch, timm, smp, torchvision or kornia
(issue 12 item 9): every plugin module they load keeps those imports inside the functions that
build or train models. Checked in a fresh interpreter that runs the CLI's ``main`` and then
writes the names of every module it imported. The speed itself is a benchmark
(``benchmarks/test_validate_speed.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.spec import encoders

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "specs" / "demo.yaml"
HEAVY = ("torch", "timm", "segmentation_models_pytorch", "torchvision", "kornia", "scipy")

RUNNER = """\
import json, sys
from harness.cli.app import main
sys.argv = ["harness", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as exc:
    code = exc.code
with open(OUT, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    """A private user cache holding smp's encoder list (as any validate after the first)."""
    home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    encoders.encoder_names()  # writes it (this process may import smp: tests do anyway)
    assert encoders.cache_file().is_file()
    return home


def imported_by(args: list[str], tmp_path: Path, cache_home: Path) -> tuple[int, list[str]]:
    out = tmp_path / "modules.json"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home), "HARNESS_STORE": str(tmp_path / "store")}
    code = RUNNER.replace("OUT", repr(str(out)))
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
    assert out.is_file(), proc.stderr
    result = json.loads(out.read_text())
    return result["code"], result["modules"]


@pytest.mark.parametrize("args", [["validate", str(DEMO)], ["list"]], ids=["validate", "list"])
def test_no_heavy_imports(args, tmp_path, cache_home):
    code, modules = imported_by(args, tmp_path, cache_home)
    assert code in (0, None), code
    heavy = sorted({m.split(".")[0] for m in modules} & set(HEAVY))
    assert heavy == [], f"`harness {' '.join(args)}` imported {heavy}"
    # it did load every plugin (so the test is not vacuous)
    assert {"harness_builtin.methods.pricon", "harness_builtin.datasets.synthetic",
            "harness.protocols.linear", "harness_builtin.metrics.pq"} <= set(modules)


def test_invalid_spec_is_reported_without_heavy_imports(tmp_path, cache_home):
    code, modules = imported_by(["validate", str(DEMO), "--set", "finetune.encoder=resnet19"],
                                tmp_path, cache_home)
    assert code == 2
    assert not {m.split(".")[0] for m in modules} & set(HEAVY)


def test_encoder_names_cache(tmp_path, monkeypatch):
    """Missing or damaged, the cache is rebuilt from smp; read back, it is smp's own list."""
    import segmentation_models_pytorch as smp

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = encoders.cache_file()
    assert not path.exists()
    names = encoders.encoder_names()
    assert names == sorted(smp.encoders.get_encoder_names()) and "resnet18" in names
    assert json.loads(path.read_text()) == names
    path.write_text("{not json")
    assert encoders.encoder_names() == names
    assert json.loads(path.read_text()) == names
    # without smp imported, the file is what is read
    monkeypatch.delitem(sys.modules, "segmentation_models_pytorch")
    path.write_text(json.dumps(["resnet18", "only-from-the-cache"]))
    assert encoders.encoder_names() == ["resnet18", "only-from-the-cache"]
