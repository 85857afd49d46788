"""Every spec shipped in specs/ validates against the installed plugins, and each thesis spec
names the thesis table its report compares with."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.references import load_thesis_results
from harness.spec import load_spec

SPECS = sorted((Path(__file__).resolve().parent.parent / "specs").glob("*.yaml"))
NOT_THESIS = {"demo", "demo_full", "regression", "pannuke_foundation_models", "pannuke_hover"}


def test_there_are_specs():
    assert len(SPECS) >= 10


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_spec_validates(path):
    rspec = load_spec(path)
    assert rspec.spec.name == path.stem
    if path.stem not in NOT_THESIS:
        assert rspec.spec.reference in load_thesis_results(), "thesis specs name their table"
