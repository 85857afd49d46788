"""A model that predicts a single class on every test image: the evaluation's per-image facts,
the report's warning (Markdown and console), and old records without the facts."""

from __future__ import annotations

import numpy as np

from harness.engine.evaluate import predicted_classes
from harness.report.build import build_report
from harness.report.tables import main_table
from harness.report.writer import write_report
from test_report import RUN_INFO, grid

NAMES = ["background", "neoplastic", "inflammatory"]


def test_predicted_classes_per_image():
    pred = np.zeros((3, 4, 4), np.uint8)
    pred[1, 0, 0] = 2  # image 1: background + inflammatory
    pred[2] = 1  # image 2: neoplastic everywhere
    facts = predicted_classes(pred, NAMES)
    assert facts == {"images_with_class": {"background": 2, "neoplastic": 1, "inflammatory": 1},
                     "single_class_images": 2}
    assert predicted_classes(np.zeros((0, 4, 4), np.uint8), NAMES)["single_class_images"] == 0


def _with_evaluation(records, single: set[str]):
    for r in records:
        flat = r["method"] in single
        r["evaluation"] = {"test_images": 8, "single_class_images": 8 if flat else 3,
                           "images_with_class": {"background": 8, "neoplastic": 0 if flat else 5,
                                                 "inflammatory": 0}}
    return records


def test_single_class_model_is_warned_in_report_and_console(tmp_path, capsys):
    records = _with_evaluation(grid({"scratch": [0.0, 0.0], "better": [0.3, 0.31]}), {"scratch"})
    report = build_report(records, [RUN_INFO]).dump()
    (warning,) = report["warnings"]
    assert "`scratch` full @ 100%" in warning and "2 of 2 cells" in warning and "background" in warning
    rows = {r[0]: r for r in main_table(report).rows}
    assert "⚠" in rows["scratch"][1] and "⚠" not in rows["better"][1]
    write_report(tmp_path, records, RUN_INFO, formats="md")
    md = (tmp_path / "report.md").read_text()
    assert "## Warnings" in md and warning in md
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "warning: " + " ".join(warning.split()) in err


def test_old_records_without_the_facts_still_report_without_a_warning(tmp_path):
    records = grid({"scratch": [0.0, 0.0]})
    assert all("evaluation" not in r for r in records)
    report = build_report(records, [RUN_INFO]).dump()
    assert report["warnings"] == [] and report["single_class"] == []
    write_report(tmp_path, records, RUN_INFO, formats="md")
    assert "## Warnings" not in (tmp_path / "report.md").read_text()
