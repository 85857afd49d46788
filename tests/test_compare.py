"""`harness compare`: per-cell regression rule, statuses, exit codes and JSON for bots."""

from __future__ import annotations

import json

import pytest

from support import run_cli
from test_report import RUN_INFO, grid
from harness.errors import DataError
from harness.plugins import get_registry
from harness.report.build import summarize
from harness.report.compare import DEFAULT_FLOOR, compare_paths, compare_rows
from harness.report.writer import write_report


def rows(values, **kw):
    return summarize(grid(values, **kw), get_registry())


def statuses(result):
    return {(c["method"], c["protocol"]): c["status"] for c in result["cells"]}


def test_spread_rule_k_std_with_floor():
    base = rows({"a": [0.30, 0.34, 0.32], "b": [0.50, 0.50, 0.50]})  # std(a) = 0.02, std(b) = 0
    new = rows({"a": [0.27, 0.31, 0.29], "b": [0.495, 0.495, 0.495]})  # a: -0.03, b: -0.005
    res = compare_rows(new, base)
    cells = {c["method"]: c for c in res["cells"]}
    assert cells["a"]["tolerance"] == pytest.approx(0.04) and cells["a"]["status"] == "ok"
    assert cells["b"]["tolerance"] == DEFAULT_FLOOR and cells["b"]["status"] == "ok"
    assert res["ok"] and res["regressions"] == 0
    worse = compare_rows(rows({"a": [0.25, 0.29, 0.27], "b": [0.48] * 3}), base)  # -0.05, -0.02
    assert statuses(worse) == {("a", "full"): "regression", ("b", "full"): "regression"}
    assert not worse["ok"] and worse["regressions"] == 2
    better = compare_rows(rows({"a": [0.40, 0.40, 0.40], "b": [0.50] * 3}), base)
    assert statuses(better) == {("a", "full"): "improved", ("b", "full"): "ok"} and better["ok"]


def test_absolute_tolerance_missing_new_and_metric_change():
    base = rows({"a": [0.30, 0.34, 0.32], "b": [0.5, 0.5, 0.5]})
    res = compare_rows(rows({"a": [0.30, 0.34, 0.32]}), base, tolerance=0.0)
    assert statuses(res) == {("a", "full"): "ok", ("b", "full"): "missing"} and not res["ok"]
    assert res["rule"] == {"kind": "absolute", "tolerance": 0.0}
    new = rows({"a": [0.3, 0.34, 0.32], "b": [0.5] * 3, "c": [0.1] * 3})
    assert statuses(compare_rows(new, base))[("c", "full")] == "new"
    assert compare_rows(new, base)["ok"]
    nan_new = rows({"a": [0.3, 0.34, 0.32], "b": [float("nan")] * 3})
    assert statuses(compare_rows(nan_new, base))[("b", "full")] == "missing"
    thesis = rows({"a": [0.3, 0.34, 0.32], "b": [0.5] * 3}, variant="thesis")
    assert set(statuses(compare_rows(thesis, base)).values()) == {"metric changed"}


def _run_dir(path, records):
    (path / "records").mkdir(parents=True)
    for r in records:
        (path / "records" / f"{r['cell_id']}.json").write_text(json.dumps(r))
    return path


def test_inputs_run_folder_or_report_json(tmp_path):
    base = _run_dir(tmp_path / "base", grid({"a": [0.30, 0.32]}))
    write_report(base, grid({"a": [0.30, 0.32]}), RUN_INFO, formats="json")
    (tmp_path / "only_report").mkdir()
    (tmp_path / "only_report" / "report.json").write_text((base / "report.json").read_text())
    for target in (base, base / "report.json", tmp_path / "only_report"):
        assert compare_paths(base, target)["ok"]
    with pytest.raises(DataError, match="neither records"):
        compare_paths(base, tmp_path)


def test_cli_exit_codes_table_and_json(tmp_path):
    base = _run_dir(tmp_path / "base", grid({"a": [0.30, 0.32], "b": [0.5, 0.5]}))
    same = _run_dir(tmp_path / "same", grid({"a": [0.30, 0.32], "b": [0.5, 0.5]}))
    worse = _run_dir(tmp_path / "worse", grid({"a": [0.20, 0.22]}))
    ok = run_cli("compare", str(same), str(base))
    assert ok.returncode == 0, ok.stderr
    assert "no regression (2 cells)" in ok.stdout and "max(2 x baseline std" in ok.stdout
    bad = run_cli("compare", str(worse), str(base), "--json")
    assert bad.returncode == 1, bad.stderr
    result = json.loads(bad.stdout)
    assert result["schema"] == "harness.compare/1" and result["regressions"] == 2
    assert {c["status"] for c in result["cells"]} == {"regression", "missing"}
    loose = run_cli("compare", str(worse), str(base), "--tolerance", "0.2")
    assert loose.returncode == 1 and "missing" in loose.stdout  # b is still missing
