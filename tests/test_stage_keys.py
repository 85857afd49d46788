"""The shipped specs' stage keys are pinned: a change that alters one (a setting that enters a
key, a version, a config field) would orphan every stored result built on it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from support import REPO
from harness.plugins import build_registry
from harness.runner import Runner
from harness.spec import load_spec
from harness.store import ArtifactStore

EXPECTED = Path(__file__).parent / "data" / "expected_keys.json"
SPECS = ["specs/demo.yaml", "specs/demo_full.yaml", "specs/regression.yaml"]


def stage_keys(spec: str, store: Path, overrides: list[str] | None = None) -> list[list[str]]:
    """``[kind, label, key]`` of every distinct stage of ``spec``'s plan, in plan order."""
    registry = build_registry()
    rspec = load_spec(REPO / spec, overrides or [], registry=registry)
    runner = Runner(rspec, registry, ArtifactStore(store), store / "out", quiet=True)
    plan, _, _ = runner.plan()
    return [[s.kind, s.label, s.key] for s in plan.stages()]


#: A PanNuke spec on the fixture of tests/test_dataset_pannuke.py (the real dataset's layout):
#: its keys cover the PanNuke cache's identity, label fractions and seeds.
PANNUKE_SPEC = """name: pannuke_fixture_keys
dataset: pannuke
methods: [scratch]
protocols: [frozen, full]
fractions: [1.0, 0.5]
seeds: [0, 1]
finetune: {epochs: 3, batch_size: 2}
metric: {name: mpq, pq_variant: thesis}
"""


def pannuke_fixture_keys(tmp: Path) -> list[list[str]]:
    """Stage keys of :data:`PANNUKE_SPEC` with the fixture prepared as a user would."""
    from support import run_cli
    from test_dataset_pannuke import write_fixture

    store = tmp / "store"
    res = run_cli("data", "prepare", "pannuke", "--source", str(write_fixture(tmp / "src")),
                  "--store", str(store))
    assert res.returncode == 0, res.stderr
    (tmp / "pannuke.yaml").write_text(PANNUKE_SPEC)
    return stage_keys(str(tmp / "pannuke.yaml"), store)


def test_pannuke_fixture_stage_keys_are_unchanged(tmp_path):
    """Pinned from the code before the one-loop / stages-as-data refactor (session 3)."""
    assert pannuke_fixture_keys(tmp_path) == json.loads(EXPECTED.read_text())["pannuke_fixture"]


@pytest.mark.parametrize("spec", SPECS)
def test_shipped_spec_stage_keys_are_unchanged(spec, tmp_path):
    expected = json.loads(EXPECTED.read_text())[spec]
    assert stage_keys(spec, tmp_path / "store") == expected


@pytest.mark.parametrize("workers", ["auto", "4"])
def test_num_workers_enters_no_key(workers, tmp_path):
    """The shipped specs say `num_workers: auto` (regression.yaml: 0): a runtime setting."""
    expected = json.loads(EXPECTED.read_text())["specs/regression.yaml"]
    assert stage_keys("specs/regression.yaml", tmp_path / "store",
                      [f"finetune.num_workers={workers}"]) == expected


if __name__ == "__main__":  # regenerate after a deliberate key change: python tests/test_stage_keys.py
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        keys = {s: stage_keys(s, Path(tmp) / s.replace("/", "_")) for s in SPECS}
        (Path(tmp) / "pk").mkdir()
        keys["pannuke_fixture"] = pannuke_fixture_keys(Path(tmp) / "pk")
    EXPECTED.write_text("{\n" + ",\n".join(
        f"  {json.dumps(s)}: [\n" + ",\n".join(f"    {json.dumps(row)}" for row in rows) + "\n  ]"
        for s, rows in keys.items()) + "\n}\n")
    sys.exit(0)
