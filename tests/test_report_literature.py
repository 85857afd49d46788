"""Reports of instance-head runs on a dataset with published figures show them beside ours,
with the aggregation; other runs do not."""

from __future__ import annotations

from harness.references import literature
from harness.report.writer import write_report
from test_report import RUN_INFO, grid


def _hover(records, dataset="pannuke"):
    for r in records:
        r["dataset"], r["head"] = dataset, "hover"
        r["metrics"]["pred_instances"] = "HoVer-Net post-processing"
    return records


def test_literature_data_has_the_published_figures():
    systems = {s["system"]: s for s in literature("pannuke")["systems"]}
    assert (systems["HoVer-Net"]["mpq"], systems["HoVer-Net"]["bpq"]) == (0.4629, 0.6596)
    assert (systems["CellViT-256"]["mpq"], systems["CellViT-256"]["bpq"]) == (0.4846, 0.6696)
    assert (systems["CellViT-SAM-H"]["mpq"], systems["CellViT-SAM-H"]["bpq"]) == (0.4980, 0.6793)
    assert all(s.get("protocol") and s.get("source") for s in systems.values())


def test_hover_report_shows_literature_and_aggregation(tmp_path):
    records = _hover(grid({"scratch": [0.30, 0.34, 0.32]}))
    write_report(tmp_path, records, RUN_INFO, formats="md")
    text = (tmp_path / "report.md").read_text()
    assert "Literature (instance PQ)" in text and "0.4629" in text and "CellViT-SAM-H" in text
    assert "ours: scratch" in text and "0.3200 ± 0.0200" in text
    assert "Aggregation: PQ per image" in text and "Published aggregation: per image" in text
    assert "Head: `hover`" in text


def test_no_literature_for_semantic_heads_or_other_datasets(tmp_path):
    write_report(tmp_path / "a", grid({"scratch": [0.3, 0.3]}), RUN_INFO, formats="md")
    write_report(tmp_path / "b", _hover(grid({"scratch": [0.3, 0.3]}), "synthetic"), RUN_INFO,
                 formats="md")
    write_report(tmp_path / "c", _hover(grid({"scratch": [0.3, 0.3]}, variant="thesis")), RUN_INFO,
                 formats="md")
    for sub in "abc":
        assert "Literature" not in (tmp_path / sub / "report.md").read_text()
