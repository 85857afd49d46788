"""The shipped specs' stage keys are pinned: a change that alters one (a setting that enters a
key, a version, a config field) would orphan every stored result built on it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import REPO
from harness.plugins import build_registry
from harness.runner import Runner
from harness.spec import load_spec
from harness.store import ArtifactStore

EXPECTED = Path(__file__).parent / "data" / "expected_keys.json"
SPECS = ["specs/demo.yaml", "specs/regression.yaml"]


def stage_keys(spec: str, store: Path) -> list[list[str]]:
    """``[kind, label, key]`` of every distinct stage of ``spec``'s plan, in plan order."""
    registry = build_registry()
    rspec = load_spec(REPO / spec, [], registry=registry)
    runner = Runner(rspec, registry, ArtifactStore(store), store / "out", quiet=True)
    plan, _, _ = runner.plan()
    return [[s.kind, s.label, s.key] for s in plan.stages()]


@pytest.mark.parametrize("spec", SPECS)
def test_shipped_spec_stage_keys_are_unchanged(spec, tmp_path):
    expected = json.loads(EXPECTED.read_text())[spec]
    assert stage_keys(spec, tmp_path / "store") == expected


if __name__ == "__main__":  # regenerate after a deliberate key change: python tests/test_stage_keys.py
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        keys = {s: stage_keys(s, Path(tmp) / s.replace("/", "_")) for s in SPECS}
    EXPECTED.write_text("{\n" + ",\n".join(
        f"  {json.dumps(s)}: [\n" + ",\n".join(f"    {json.dumps(row)}" for row in rows) + "\n  ]"
        for s, rows in keys.items()) + "\n}\n")
    sys.exit(0)
