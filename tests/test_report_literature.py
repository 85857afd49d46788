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


def test_pooled_pq_is_conics_mpq_plus():
    import math

    import numpy as np

    from harness.metrics.pq import image_pq, pooled_pq

    gt = np.zeros((2, 10, 10), np.int32)
    gt[0, 0:5, 0:4] = 7                       # class 1 of image 1: one nucleus, 20 px
    pred = np.zeros_like(gt)
    pred[0, 0:4, 0:4] = 3                     # 16 px inside it: IoU 0.8
    counts = np.zeros((2, 2, 4))
    image_pq([gt[0], gt[1] * 0], [pred[0], pred[1] * 0], counts=counts[0])  # classes 1, 2
    empty = np.zeros((10, 10), np.int32)
    spurious = np.zeros((10, 10), np.int32)
    spurious[5:8, 5:8] = 1                    # image 2: a class-1 prediction without GT: FP
    bpq, class_pq = image_pq([empty, empty], [spurious, empty], counts=counts[1])
    assert math.isnan(class_pq[0])            # per-image PQ skips the absent class ...
    assert counts[1, 0].tolist() == [0, 1, 0, 0]  # ... the pooled counts keep its FP
    res = pooled_pq(counts, ["a", "b"])
    expected_a = 1 / (1 + 0.5 + 1e-6) * (0.8 / (1 + 1e-6))
    assert math.isclose(res["per_class"]["a"], expected_a, rel_tol=1e-12)
    assert res["per_class"]["b"] == 0.0 and math.isclose(res["mpq_plus"], expected_a / 2)


def test_lizard_report_gives_mpq_plus(tmp_path):
    records = grid({"scratch": [0.3, 0.32]})
    for r, v in zip(records, (0.25, 0.27)):
        r["dataset"] = "lizard"
        r["metrics"]["pooled"] = {"instance": {"mpq_plus": v, "per_class": {}}}
    write_report(tmp_path, records, RUN_INFO, formats="md")
    text = (tmp_path / "report.md").read_text()
    assert "Pooled mPQ+" in text and "0.2600 ± 0.0141" in text and "CoNIC" in text
    write_report(tmp_path / "p", grid({"scratch": [0.3, 0.32]}), RUN_INFO, formats="md")
    assert "Pooled" not in (tmp_path / "p" / "report.md").read_text()
