"""Plan, stage store and runner, in-process on tiny synthetic data."""

from __future__ import annotations

import json

import pytest
import torch

from support import TINY_SPEC, write_spec
from harness.hookspecs import hookimpl
from harness.plugins import build_registry
from harness.runner import Runner
from harness.spec import load_spec
from harness.store import ArtifactStore


class Observer:
    """A lifecycle-hook plugin, registered like a logger would be."""

    def __init__(self):
        self.calls: list[tuple[str, object]] = []

    @hookimpl
    def harness_run_started(self, event):
        self.calls.append(("run_started", event.name))

    @hookimpl
    def harness_stage_finished(self, event):
        self.calls.append(("stage_finished", (event.kind, event.cached)))

    @hookimpl
    def harness_metrics_logged(self, event):
        self.calls.append(("metrics_logged", (event.kind, event.step, event.metrics["train/loss"])))

    @hookimpl
    def harness_cell_finished(self, event):
        self.calls.append(("cell_finished", event.cell_id))

    @hookimpl
    def harness_run_finished(self, event):
        self.calls.append(("run_finished", len(event.records)))


def _run(spec_path, store_root, out, overrides=(), registry=None):
    registry = registry or build_registry()
    rspec = load_spec(spec_path, list(overrides), registry=registry)
    runner = Runner(rspec, registry, ArtifactStore(store_root), out, quiet=True)
    plan, _, _ = runner.plan()
    return plan, runner.run(plan)


def test_stages_are_shared_and_reused(tmp_path, imagenet_weights):
    spec = write_spec(tmp_path, TINY_SPEC.replace("methods: [scratch]", "methods: [scratch, supervised]")
                      .replace("folds: [fold1]", "folds: [fold1, fold2]").replace("epochs: 2", "epochs: 1"))
    plan, result = _run(spec, tmp_path / "store", tmp_path / "out")
    kinds = [s.kind for s in plan.stages()]
    # one encoder per method, shared by both folds and both protocols
    assert kinds.count("encoder") == 2
    assert kinds.count("finetune") == 2 * 2 * 2
    assert len(plan.cells) == 8 and len(result.records) == 8
    assert len(result.computed) == len(plan.stages()) and not result.reused

    # a second run recomputes nothing and gives the same numbers
    _, again = _run(spec, tmp_path / "store", tmp_path / "out2")
    assert not again.computed and len(again.reused) == len(plan.stages())
    first = {r["cell_id"]: r["metric"]["value"] for r in result.records}
    assert {r["cell_id"]: r["metric"]["value"] for r in again.records} == first

    # a change of fine-tuning settings reuses the encoders only
    _, changed = _run(spec, tmp_path / "store", tmp_path / "out3", ["finetune.lr=0.002"])
    assert len(changed.reused) == 2


def test_supervised_encoder_holds_the_weights_file(tmp_path, imagenet_weights):
    spec = write_spec(tmp_path, TINY_SPEC.replace("methods: [scratch]", "methods: [supervised]")
                      .replace("protocols: [frozen, full]", "protocols: [frozen]")
                      .replace("epochs: 2", "epochs: 1"))
    plan, result = _run(spec, tmp_path / "store", tmp_path / "out")
    encoder = next(s for s in plan.stages() if s.kind == "encoder")
    saved = torch.load(tmp_path / "store" / "stages" / "encoder" / encoder.key / "encoder.pt")
    source = torch.load(imagenet_weights)
    assert torch.equal(saved["conv1.weight"], source["conv1.weight"])
    assert torch.equal(saved["layer4.1.bn2.running_var"], source["layer4.1.bn2.running_var"])
    # frozen: the encoder after fine-tuning still holds the ImageNet weights
    ft = next(s for s in plan.stages() if s.kind == "finetune")
    model = torch.load(tmp_path / "store" / "stages" / "finetune" / ft.key / "model.pt")
    assert torch.equal(model["encoder.conv1.weight"], source["conv1.weight"])


def test_frozen_bn_fixed_keeps_running_stats(tmp_path, imagenet_weights):
    spec = write_spec(tmp_path, TINY_SPEC.replace("methods: [scratch]", "methods: [supervised]")
                      .replace("protocols: [frozen, full]", "protocols: [frozen]")
                      .replace("epochs: 2", "epochs: 1"))
    source = torch.load(imagenet_weights)
    for mode, unchanged in (("fixed", True), ("adapt", False)):
        plan, _ = _run(spec, tmp_path / "store", tmp_path / f"out-{mode}", [f"finetune.frozen_bn={mode}"])
        ft = next(s for s in plan.stages() if s.kind == "finetune")
        model = torch.load(tmp_path / "store" / "stages" / "finetune" / ft.key / "model.pt")
        same = torch.equal(model["encoder.bn1.running_mean"], source["bn1.running_mean"])
        assert same is unchanged, mode


def test_records_and_report(tiny_run):
    out = tiny_run.out  # TINY_SPEC, --set finetune.epochs=1
    records = sorted((out / "records").glob("*.json"))
    assert len(records) == 2
    rec = json.loads(records[0].read_text())
    assert rec["schema"] == "harness.record/1"
    assert {"method", "protocol", "fraction", "fold", "seed"} <= rec.keys()
    assert set(rec["metrics"]) >= {"instance", "thesis"}
    assert rec["metrics"]["instance"]["per_tissue"] and rec["metrics"]["thesis"]["per_class"]
    train_ids = [i for ids in rec["split"]["train_ids"].values() for i in ids]
    assert len(train_ids) == 16 and len(rec["split"]["test_ids"]) == 8
    assert not set(train_ids) & set(rec["split"]["test_ids"])
    assert rec["overrides"] == ["finetune.epochs=1"]
    prov = rec["provenance"]
    assert prov["packages"]["torch"] and prov["device"].startswith("cpu") and prov["seed"] == 0
    assert [s["kind"] for s in rec["stages"]] == ["encoder", "finetune", "evaluate"]
    for name in ("report.md", "report.json", "report.csv", "run.json"):
        assert (out / name).exists()
    assert "| scratch |" in (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    assert {r["protocol"] for r in report["rows"]} == {"frozen", "full"}


def test_lifecycle_hooks_are_called(tmp_path):
    observer = Observer()
    registry = build_registry(extra_plugins=[observer])
    spec = write_spec(tmp_path, TINY_SPEC.replace("protocols: [frozen, full]", "protocols: [full]"))
    _run(spec, tmp_path / "store", tmp_path / "out", registry=registry)
    names = [c[0] for c in observer.calls]
    assert names[0] == "run_started" and names[-1] == "run_finished"
    assert names.count("cell_finished") == 1
    assert [c[1] for c in observer.calls if c[0] == "stage_finished"] == [
        ("encoder", False), ("finetune", False), ("evaluate", False)]
    steps = [c[1] for c in observer.calls if c[0] == "metrics_logged"]
    assert len(steps) == 2 and steps[0][1] < steps[1][1]  # one per epoch, increasing step


#: Required fall of the fine-tuning loss over 4 epochs, as a fraction of the first epoch's.
FINETUNE_LOSS_FALL = 0.08


def test_finetuning_loss_falls(tmp_path):
    """Four epochs of full fine-tuning lower the training loss.

    Measured (2026-12-07, seeds 0, 1, 2 x 1 and 2 torch threads): final / first loss 0.713-0.742,
    a fall of 0.258 at the least; the margin (a fall of 0.08) is under a third of that (the
    earlier margin, 0.2, was 0.78 of it: too close to hold on every CPU)."""
    spec = write_spec(tmp_path, TINY_SPEC.replace("protocols: [frozen, full]", "protocols: [full]"))
    _, result = _run(spec, tmp_path / "store", tmp_path / "out", ["finetune.epochs=4"])
    train = result.records[0]["train"]
    assert train["final_loss"] < (1 - FINETUNE_LOSS_FALL) * train["first_loss"], train
