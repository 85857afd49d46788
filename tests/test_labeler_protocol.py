"""The labeler protocol: `thesis` (one labeler on fixed folds 1+2, whatever the test fold) and
`per_cell` (each cell's labeler on that cell's own training split and label fraction), the
records' labeler facts, and the report's labeler table and test-fold mark."""

from __future__ import annotations

import json

import pytest

from support import write_spec
from harness.errors import SpecError
from harness.plugins import build_registry
from harness.report.build import build_report
from harness.report.tables import main_table, to_markdown
from harness.runner import Runner
from harness.spec import load_spec
from harness.store import ArtifactStore
from harness_builtin.methods.pricon.chain import LabelerStage
from harness_builtin.methods.pricon.report import labeler_table

PRICON = "epochs: 1, batch_size: 8, n_points: 4, augment: {crop_size: 64}"
SPEC = f"""
name: leakfree_toy
dataset: {{name: synthetic, image_size: 32, images_per_fold: 8, unlabeled_images: 16, unlabeled_size: 64}}
methods:
  pricon: {{{PRICON}, labeler: {{epochs: 1, batch_size: 8}}}}
  pricon_leakfree: {{method: pricon, {PRICON}, labeler: {{epochs: 1, batch_size: 8, protocol: per_cell}}}}
protocols: [frozen]
fractions: [1.0, 0.5]
folds: [fold1, fold2, fold3]
finetune: {{epochs: 1, batch_size: 4}}
"""


def _runner(tmp_path, text=SPEC, overrides=()):
    registry = build_registry()
    rspec = load_spec(write_spec(tmp_path, text), list(overrides), registry=registry)
    return Runner(rspec, registry, ArtifactStore(tmp_path / "store"), tmp_path / "out", quiet=True)


def _labeler(cell):
    return next(s for s in cell.stages() if s.kind == "labeler")


def labeler_facts(cell, dataset):
    """What the cell's record says of its labeler (the ``labeler`` kind's record facts)."""
    return LabelerStage().record_facts(_labeler(cell), cell, dataset)


def _ids(by_group):
    return {i for ids in by_group.values() for i in ids}


def test_per_cell_labeler_trains_on_the_cells_own_split_only(tmp_path):
    runner = _runner(tmp_path)
    plan, _, arrays = runner.plan()
    fold_of = dict(zip(arrays.ids, arrays.groups))
    cells = {(c.method, c.fold, c.fraction): c for c in plan.cells}
    for fraction in (1.0, 0.5):
        leakfree = cells[("pricon_leakfree", "fold2", fraction)]
        labeler = _labeler(leakfree)
        ids = _ids(labeler.info["train_ids"])
        assert ids and not any(fold_of[i] == "fold2" for i in ids)  # no image of the test fold
        assert ids == _ids(leakfree.model.info["train_ids"])  # the cell's own labels
        assert leakfree.info == {"labeler_protocol": "per_cell"}
        # the thesis labeler of the same cell learned from fold 2's labels, at 100%
        thesis = _labeler(cells[("pricon", "fold2", fraction)])
        assert {fold_of[i] for i in _ids(thesis.info["train_ids"])} == {"fold1", "fold2"}
        # what the cells' records will say (harness.records.cell_facts)
        facts = labeler_facts(leakfree, "synthetic")["labeler"]
        assert facts["protocol"] == "per_cell" and facts["test_images_seen"] == 0
        assert facts["images_beyond_cell"] == 0
        facts = labeler_facts(cells[("pricon", "fold2", fraction)], "synthetic")["labeler"]
        assert facts["protocol"] == "thesis" and facts["test_images_seen"] == 8
        assert facts["images_beyond_cell"] == 8 + (0 if fraction == 1.0 else 4)
    assert labeler_facts(cells[("pricon", "fold3", 1.0)], "synthetic")["labeler"]["test_images_seen"] == 0
    kinds = [s.kind for s in plan.stages()]
    # thesis: one chain; per_cell: one per (fold, fraction), the fold-3 / 100% one equal to it
    assert kinds.count("labeler") == 1 + 6 - 1 and kinds.count("pretrain") == 1 + 6 - 1
    assert _labeler(cells[("pricon_leakfree", "fold3", 1.0)]).key == _labeler(cells[("pricon", "fold3", 1.0)]).key
    # a pretraining stage's key does not hash the protocol, only the masks it learns from
    pre = {c.method: next(s for s in c.stages() if s.kind == "pretrain") for c in plan.cells
           if c.fold == "fold3" and c.fraction == 1.0}
    assert pre["pricon"].key == pre["pricon_leakfree"].key


def test_per_cell_rejects_fixed_groups_and_other_datasets(tmp_path):
    for extra, field in (("train_groups: [fold1]", "train_groups"), ("dataset: tnbc", "dataset")):
        text = SPEC.replace("protocol: per_cell", f"protocol: per_cell, {extra}")
        with pytest.raises(SpecError, match=f"labeler.{field}: protocol per_cell"):
            _runner(tmp_path, text)


def test_report_shows_labeler_score_protocol_and_marks_test_fold_labels():
    from test_report import RUN_INFO, make_record

    records = []
    for i, fold in enumerate(("fold1", "fold2", "fold3")):
        for method, protocol, seen in (("pricon", "thesis", 8 if fold != "fold3" else 0),
                                       ("pricon_leakfree", "per_cell", 0)):
            r = make_record(method, fold=fold, value=0.3 + 0.01 * i)
            r["upstream"] = {"labeler_eval": {"value": 0.2 + 0.1 * i, "metrics": {}}}
            r["labeler"] = {"protocol": protocol, "dataset": "synthetic", "train_ids": {},
                            "images": 16, "test_images_seen": seen, "images_beyond_cell": 8 if seen else 0}
            records.append(r)
    old = make_record("pricon_old", value=0.3)  # a record from before labeler facts
    old["upstream"] = {"labeler_eval": {"value": 0.5, "metrics": {}}}
    report = build_report(records + [old], [RUN_INFO]).dump()
    by = {e["method"]: e for e in report["labelers"]}
    assert by["pricon"]["cells_test_labels"] == 2 and by["pricon"]["protocols"] == ["thesis"]
    assert by["pricon"]["score_mean"] == pytest.approx(0.3) and by["pricon"]["score_n"] == 3
    assert by["pricon_leakfree"]["cells_test_labels"] == 0
    assert by["pricon_old"]["protocols"] == ["thesis?"] and by["pricon_old"]["cells_unknown"] == 1
    table = main_table(report)
    rows = {r[0]: r for r in table.rows}
    assert "†" in rows["pricon"][1] and "†" not in rows["pricon_leakfree"][1]
    assert any(n.startswith("†: the labeler") for n in table.notes)
    text = to_markdown(labeler_table(report))
    assert "| pricon | full | thesis | 0.3000 ± 0.1000 mpq (instance) (n=3) | 3 | 2 of 3 |" in text
    assert "| pricon_old | full | thesis? | 0.5000 mpq (instance) (n=1) | 1 | 0 of 1 (1 unknown) |" in text


@pytest.mark.slow
def test_leakfree_end_to_end_records_and_report(tmp_path):
    runner = _runner(tmp_path, overrides=["folds=[fold2]", "fractions=[0.5]"])
    plan, _, _ = runner.plan()
    result = runner.run(plan)
    by = {r["method"]: r for r in result.records}
    leak, thesis = by["pricon_leakfree"]["labeler"], by["pricon"]["labeler"]
    test_ids = set(by["pricon_leakfree"]["split"]["test_ids"])
    assert leak["protocol"] == "per_cell" and leak["test_images_seen"] == 0
    assert not _ids(leak["train_ids"]) & test_ids and leak["images_beyond_cell"] == 0
    assert thesis["protocol"] == "thesis" and thesis["test_images_seen"] == len(test_ids) == 8
    assert thesis["images_beyond_cell"] == 8 + 4  # all of fold 2, and the half of fold 1 the cell lacks
    for r in result.records:
        ev = r["evaluation"]
        assert ev["test_images"] == 8 and sum(ev["images_with_class"].values()) >= 8
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    labelers = {e["method"]: e for e in report["labelers"]}
    assert labelers["pricon"]["cells_test_labels"] == 1 and labelers["pricon_leakfree"]["cells_test_labels"] == 0
    assert labelers["pricon_leakfree"]["protocols"] == ["per_cell"]
    assert labelers["pricon"]["score_mean"] == pytest.approx(by["pricon"]["upstream"]["labeler_eval"]["value"])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Labelers" in md and "per_cell" in md
    row = next(line for line in md.splitlines() if line.startswith("| pricon |"))
    assert "†" in row and "†" not in next(line for line in md.splitlines() if line.startswith("| pricon_leakfree |"))
