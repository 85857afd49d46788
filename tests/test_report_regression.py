"""The regression gate end to end: specs/regression.yaml against its committed baseline
(benchmarks/baselines/regression.json). An unchanged rerun passes; an injected regression (a
halved learning rate: mPQ drops by about 0.05) is caught with exit code 1.

The slow test runs its trainings with one torch thread (fast on a busy 2-core machine) while the
baseline was computed with two: the float noise between those is of the same kind as between two
CPUs, and the default tolerance has to absorb it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from support import REPO, run_cli
from harness.report.compare import DEFAULT_FLOOR
from harness.report.schema import load_report
from harness.spec import load_spec

SPEC = REPO / "specs" / "regression.yaml"
BASELINE = REPO / "benchmarks" / "baselines" / "regression.json"
INJECTED = ["--set", "finetune.lr=0.0005"]  # a halved learning rate


def test_committed_baseline_matches_the_spec():
    """The baseline is a valid report of exactly this spec (re-baseline after editing the spec:
    `harness run specs/regression.yaml && cp reports/regression/report.json` here), and its value
    is far enough above 0 for the default tolerance to be a small fraction of it."""
    report = load_report(BASELINE)
    (row,) = report.rows
    assert (row.method, row.protocol, row.fraction, row.metric, row.variant) == \
        ("scratch", "full", 1.0, "mpq", "instance")
    assert row.mean > 5 * DEFAULT_FLOOR
    (run,) = report.provenance["runs"]
    assert run["overrides"] == []
    now = json.loads(json.dumps(load_spec(SPEC).resolved()))
    written = yaml.safe_load(SPEC.read_text())
    changed = _changed(written, now, run["spec"])
    assert not changed, (f"specs/regression.yaml changed ({', '.join(changed)}): regenerate "
                         "benchmarks/baselines/regression.json")


def _changed(written: dict, now: dict, then: dict, prefix: str = "") -> list[str]:
    """Settings the spec file writes whose resolved value differs from the baseline's (settings
    the file leaves to defaults are not compared, so a new spec option does not break this)."""
    out = []
    for key, value in written.items():
        if isinstance(value, dict) and isinstance(now.get(key), dict):
            out += _changed(value, now[key], then.get(key) or {}, f"{prefix}{key}.")
        elif now.get(key) != then.get(key):
            out.append(prefix + key)
    return out


def _run(tmp_path: Path, name: str, *overrides: str) -> Path:
    out = tmp_path / name
    res = run_cli("run", str(SPEC), *overrides, "--store", str(tmp_path / "store"), "--output",
                  str(out), "--quiet", env={"OMP_NUM_THREADS": "1"}, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.mark.slow
def test_gate_passes_unchanged_run_and_catches_injected_regression(tmp_path):
    """The gate passes the spec as it is and flags a halved learning rate as a regression.

    Measured (2026-12-07, seed 0 as the spec, 1 and 2 torch threads): unchanged mPQ 0.069871
    against the baseline's 0.069900 (|delta| 3e-5, tolerance 0.01); halved lr 0.036687, a delta
    of -0.0332, 3.3x the tolerance (another machine measured a drop of ~0.05). The injected run
    must be classed a regression (delta below -tolerance); the earlier demand of a delta below
    -3x the tolerance was 0.9 of this machine's drop: too close to hold on every CPU."""
    unchanged = _run(tmp_path, "unchanged")
    ok = run_cli("compare", str(unchanged), str(BASELINE))
    print(ok.stdout)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ok_json = json.loads(run_cli("compare", str(unchanged), str(BASELINE), "--json").stdout)
    (cell,) = ok_json["cells"]
    assert cell["status"] == "ok", cell  # |delta| (float noise) within the tolerance

    broken = _run(tmp_path, "injected", *INJECTED)
    bad = run_cli("compare", str(broken), str(BASELINE))
    print(bad.stdout)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "regression" in bad.stdout and "1 regression(s)" in bad.stdout
    bad_json = json.loads(run_cli("compare", str(broken), str(BASELINE), "--json").stdout)
    (cell,) = bad_json["cells"]
    assert cell["status"] == "regression" and cell["delta"] < -cell["tolerance"], cell
