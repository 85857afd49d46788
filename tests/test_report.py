"""Reports from hand-made result records: statistics, main table, paired comparisons, like-for-like
paper column, both PQ variants, schema validation, the written formats and `harness report`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from support import run_cli
from harness.errors import DataError, SpecError
from harness.plugins import get_registry
from harness.report import stats
from harness.report.build import build_report, summarize
from harness.report.schema import RECORD_SCHEMA, Report, load_records, load_report, validate_record
from harness.report.tables import main_table, to_markdown
from harness.report.writer import write_report

CLASSES = ("neoplastic", "inflammatory")
TISSUES = ("Breast", "Colon")


def pq_block(value: float) -> dict:
    return {"mpq": value, "bpq": value + 0.1, "n_images": 4,
            "per_class": {c: value + 0.01 * i for i, c in enumerate(CLASSES)},
            "per_tissue": {t: {"mpq": value - 0.01 * i, "bpq": value, "n": 2} for i, t in enumerate(TISSUES)},
            "per_image": {"mpq": [value] * 4, "bpq": [value] * 4}}


def make_record(method="scratch", protocol="full", fraction=1.0, fold="fold1", seed=0, value=0.3,
                variant="instance", reference=None, thesis_value=None, run="unit", stage_seconds=1.5):
    cell = f"{method}__{protocol}__frac{fraction:g}__{fold}__seed{seed}"
    return {
        "schema": RECORD_SCHEMA, "run": run, "cell_id": cell, "method": method, "plugin": method,
        "protocol": protocol, "fraction": fraction, "fold": fold, "seed": seed, "dataset": "synthetic",
        "reference": reference,
        "metric": {"name": "mpq", "variant": variant,
                   "value": value if variant == "instance" else (thesis_value or value)},
        "metrics": {"instance": pq_block(value), "thesis": pq_block(thesis_value or value + 0.05),
                    "connectivity": 4},
        "split": {"train_ids": {}, "test_ids": []},
        "train": {"first_loss": 2.0, "final_loss": 1.0, "steps": 4},
        "upstream": {},
        "stages": [{"kind": "encoder", "key": f"enc{method}{seed}", "label": f"{method} encoder",
                    "cached": False, "seconds": 0.5},
                   {"kind": "finetune", "key": f"ft{cell}", "label": f"{method} {protocol}",
                    "cached": False, "seconds": stage_seconds},
                   {"kind": "evaluate", "key": f"ev{cell}", "label": f"evaluate {cell}",
                    "cached": True, "seconds": 0.25}],
        "overrides": ["finetune.epochs=1"],
        "provenance": {"harness_version": "0.1.0", "git_commit": "abc123", "python": "3.11",
                       "platform": "Linux", "device": "cpu (2 cores)", "seed": seed,
                       "packages": {"torch": "2.4"}, "plugins": {f"method:{method}": "1@x==0.1",
                                                                  "dataset:synthetic": "1@x==0.1",
                                                                  "method:unused": "1@y"}},
        "created_at": 0.0,
    }


def grid(values: dict[str, list[float]], protocol="full", fraction=1.0, **kw) -> list[dict]:
    """Records of several methods on folds 1..n (seed 0), one value per fold."""
    return [make_record(m, protocol, fraction, f"fold{i + 1}", 0, v, **kw)
            for m, vals in values.items() for i, v in enumerate(vals)]


RUN_INFO = {"name": "unit", "spec": {"name": "unit", "description": "A unit-test run."},
            "overrides": ["finetune.epochs=1"], "source": "specs/unit.yaml", "cells": 6}


# --- statistics ----------------------------------------------------------------------------------

def test_mean_std_and_t_interval():
    assert stats.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert stats.mean_std([0.5]) == (0.5, None)  # one value: no spread
    assert stats.mean_std([None, float("nan")]) == (None, None)
    lo, hi = stats.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2}
    assert lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    assert stats.t_interval([1.0]) == (None, None)


def test_holm_wilcoxon_bootstrap():
    assert stats.holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert stats.wilcoxon([0.1, 0.2, 0.3]) == pytest.approx(0.25)  # exact, smallest p for n = 3
    assert stats.wilcoxon([0.0, 0.0, 0.0]) == 1.0 and stats.wilcoxon([0.1]) is None
    p, ci = stats.paired_bootstrap([0.0, 0.0, 0.0])
    assert p == 1.0 and ci == [0.0, 0.0]
    p, ci = stats.paired_bootstrap([0.05, 0.06, 0.055, 0.052])
    assert p < 0.001 and 0.05 <= ci[0] <= ci[1] <= 0.06
    p, _ = stats.paired_bootstrap([0.05, -0.06, 0.01, -0.02])
    assert p > 0.3
    assert stats.paired_diffs({("f1", 0): 0.5, ("f2", 0): 0.4, ("f3", 0): None},
                              {("f1", 0): 0.3, ("f3", 0): 0.2}) == pytest.approx([0.2])


# --- tables --------------------------------------------------------------------------------------

def test_summarize_rows_best_and_ci():
    rows = summarize(grid({"scratch": [0.30, 0.32, 0.31], "better": [0.40, 0.41, 0.39]}), get_registry())
    by = {r["method"]: r for r in rows}
    assert [r["method"] for r in rows] == ["scratch", "better"]  # record order = spec order
    assert by["better"]["best"] and not by["scratch"]["best"]
    assert by["scratch"]["n"] == 3 and by["scratch"]["folds"] == ["fold1", "fold2", "fold3"]
    assert by["scratch"]["ci_low"] < by["scratch"]["mean"] < by["scratch"]["ci_high"]
    assert by["scratch"]["paper"] is None  # no reference table


def test_paired_comparison_pairs_identical_folds_and_marks_table():
    records = grid({"scratch": [0.30, 0.32, 0.31, 0.30, 0.33, 0.31],
                    "better": [0.40, 0.42, 0.41, 0.405, 0.43, 0.40]})
    records += [make_record("better", fold="fold9", value=0.9)]  # no baseline partner: unpaired
    report = build_report(records, [RUN_INFO], baseline="scratch").dump()
    (c,) = report["comparisons"]
    assert c["method"] == "better" and c["n_pairs"] == 6 and c["significant"]
    assert c["mean_diff"] == pytest.approx(0.595 / 6)
    # all six differences positive: only the all-+ and all-- patterns are as extreme
    assert c["p_signflip"] == pytest.approx(2 / 64) and c["signflip"] == "exact"
    assert c["p_min"] == pytest.approx(2 / 64) and c["p_signflip_holm"] == c["p_signflip"]
    assert c["p_wilcoxon"] == pytest.approx(2 / 64)
    lo, hi = c["diff_t_ci"]
    assert lo < c["mean_diff"] < hi and lo > 0
    md = to_markdown(main_table(report))
    assert "▲" in md and "**" in md  # better is best and significantly above the baseline
    assert build_report(records, [RUN_INFO]).dump()["baseline"] == "scratch"  # default: first method
    with pytest.raises(SpecError, match="--baseline nope"):
        build_report(records, [RUN_INFO], baseline="nope")


def test_paper_column_only_like_for_like():
    # headline = thesis variant mPQ on the Table 4.1 reference: paper + delta in the main table
    thesis = grid({"supervised": [0.38, 0.40, 0.39]}, variant="thesis", reference="pannuke")
    rows = summarize(thesis, get_registry())
    assert rows[0]["paper"] == pytest.approx(0.3977) and rows[0]["diff"] == pytest.approx(0.39 - 0.3977)
    # headline = instance variant: no paper column, but the paper section uses our thesis values
    inst = [make_record("supervised", fold=f"fold{i}", value=0.2, reference="pannuke",
                        thesis_value=v) for i, v in enumerate([0.30, 0.31, 0.32])]
    report = build_report(inst, [RUN_INFO]).dump()
    assert report["rows"][0]["paper"] is None
    (p,) = report["paper"]
    assert p["variant"] == "thesis" and p["mean"] == pytest.approx(0.31)
    assert p["paper"] == pytest.approx(0.3977) and p["outside_ci"] is True
    assert "paper" not in to_markdown(main_table(report))


def test_breakdown_has_both_variants_per_class_and_tissue():
    report = build_report(grid({"scratch": [0.3, 0.5]}), [RUN_INFO]).dump()
    for variant in ("instance", "thesis"):
        part = report["breakdown"][variant]
        assert set(part["per_class"][0]["values"]) == set(CLASSES)
        assert set(part["per_tissue"][0]["values"]) == set(TISSUES)
    assert report["breakdown"]["instance"]["overall"][0]["values"]["mpq"]["mean"] == pytest.approx(0.4)


# --- schema --------------------------------------------------------------------------------------

def test_schema_validation_on_read(tmp_path):
    bad = make_record()
    del bad["metric"]["name"]
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "x.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"x.json: not a valid result record \(metric.name"):
        load_records([tmp_path])
    with pytest.raises(DataError, match="unsupported record schema"):
        validate_record({**make_record(), "schema": "harness.record/9"})
    assert validate_record({**make_record(), "future_key": 1})["future_key"] == 1  # kept
    report = build_report(grid({"scratch": [0.3, 0.5]}), [RUN_INFO]).dump()
    (tmp_path / "report.json").write_text(json.dumps({**report, "schema": "harness.report/7"}))
    with pytest.raises(DataError, match="unsupported report schema"):
        load_report(tmp_path / "report.json")


# --- writing -------------------------------------------------------------------------------------

def _fake_store(root: Path, records: list[dict]) -> None:
    for r in records:
        for s in r["stages"]:
            if s["kind"] == "finetune":
                d = root / "stages" / "finetune" / s["key"]
                d.mkdir(parents=True, exist_ok=True)
                (d / "train_log.json").write_text(json.dumps(
                    [{"epoch": e, "loss": 2.0 / e} for e in range(1, 6)]))


def test_write_report_all_formats(tmp_path):
    records = grid({"scratch": [0.30, 0.32, 0.31], "better": [0.40, 0.42, 0.41]})
    records += grid({"scratch": [0.10, 0.12, 0.11], "better": [0.20, 0.22, 0.21]}, fraction=0.1)
    _fake_store(tmp_path / "store", records)
    out = tmp_path / "out"
    paths = write_report(out, records, {**RUN_INFO, "store": str(tmp_path / "store")})  # runner's call
    names = {p.name for p in paths}
    assert {"report.md", "report.html", "report.json", "report.csv", "bars.png", "fractions.png",
            "loss.png"} <= names and all(p.exists() for p in paths)
    md = (out / "report.md").read_text()
    for section in ("## Summary", "## Main results", "## Paired comparison",
                    "## PQ variants, per class and per tissue", "## Training curves", "## Provenance",
                    "### Stages and wall time", "Per-class PQ, variant `thesis`",
                    "Per-tissue mPQ, variant `instance`", "full @ 10%", "![bars](figures/bars.png)"):
        assert section in md, section
    assert "git commit abc123" in md and "method:unused" not in md and "`finetune.epochs=1`" in md
    report = load_report(out / "report.json")
    assert isinstance(report, Report) and len(report.rows) == 4 and report.baseline == "scratch"
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert rows[0]["method"] == "scratch" and float(rows[0]["fraction"]) == 1.0 and rows[0]["n"] == "3"
    # only some formats
    only = write_report(tmp_path / "only", records, RUN_INFO, formats="json,csv")
    assert sorted(p.name for p in only) == ["report.csv", "report.json"]


def _run_dir(path: Path, records: list[dict], name: str) -> Path:
    (path / "records").mkdir(parents=True)
    for r in records:
        (path / "records" / f"{r['cell_id']}.json").write_text(json.dumps(r))
    (path / "run.json").write_text(json.dumps({**RUN_INFO, "name": name}))
    return path


def test_cli_report_merges_runs(tmp_path):
    a = _run_dir(tmp_path / "a", grid({"scratch": [0.3, 0.31]}), "run_a")
    b = _run_dir(tmp_path / "b", grid({"better": [0.4, 0.41]}, protocol="full"), "run_b")
    res = run_cli("report", str(a), str(b), "--output", str(tmp_path / "merged"),
                  "--format", "md,json", "--baseline", "better")
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert report["runs"] == ["run_a", "run_b"] and report["baseline"] == "better"
    assert {r["method"] for r in report["rows"]} == {"scratch", "better"}
    assert not (tmp_path / "merged" / "report.html").exists()
    bad = run_cli("report", str(a), "--format", "pdf")
    assert bad.returncode == 2 and "unknown format" in bad.stderr


def test_dice_records_paper_like_for_like_and_no_pq_tables(tmp_path):
    records = []
    for i, v in enumerate([0.83, 0.84, 0.85]):
        r = make_record("scratch", fold=f"fold{i}", value=v, reference="tnbc")
        r["metric"] = {"name": "dice", "variant": None, "value": v}
        r["metrics"] = {"dice": {"dice": v, "per_image": [v, v]}}
        records.append(r)
    report = build_report(records, [RUN_INFO]).dump()
    assert report["rows"][0]["paper"] == pytest.approx(0.8324)  # Table A.2, scratch, full
    assert report["paper"][0]["metric"] == "dice" and report["paper"][0]["outside_ci"] is False
    assert report["breakdown"] == {}
    paths = write_report(tmp_path, records, RUN_INFO, formats="md")
    md = (tmp_path / "report.md").read_text()
    assert "full paper" in md and "## Paper comparison" in md and "PQ variants" not in md
    assert [p.name for p in paths][:1] == ["report.md"]
