"""The README's demo through the CLI: a tiny version always, the real one (learning) as `slow`."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

TINY = ["--set", "finetune.epochs=1", "--set", "dataset.images_per_fold=8",
        "--set", "dataset.image_size=32", "--set", "dataset.unlabeled_images=8",
        "--set", "dataset.unlabeled_size=32", "--set", "finetune.batch_size=8",
        "--set", "folds=[fold1]"]
for _m in ("simclr", "pricon"):
    TINY += ["--set", f"methods.{_m}.epochs=1", "--set", f"methods.{_m}.batch_size=4",
             "--set", f"methods.{_m}.augment.crop_size=32"]
TINY += ["--set", "methods.pricon.labeler.epochs=1", "--set", "methods.pricon.labeler.batch_size=8",
         "--set", "methods.pricon.resolution=4"]


def test_demo_end_to_end_via_cli(tmp_path):
    out = tmp_path / "out"
    res = run_cli("run", "specs/demo.yaml", *TINY, "--store", str(tmp_path / "store"),
                  "--output", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    report = (out / "report.md").read_text()
    assert "| scratch |" in report and "| simclr |" in report and "| pricon |" in report
    assert "n=1" in report
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert {(r["method"], r["protocol"]) for r in rows} == {
        (m, p) for m in ("scratch", "simclr", "pricon") for p in ("frozen", "full")}
    # one encoder per method shared by both protocols: scratch encoder, simclr pretrain,
    # pricon random labeler encoder + labeler + labeler_eval + pseudo-labels + pretrain, then
    # 6 x (finetune + evaluate)
    assert "6 cells; 19 stages computed, 0 reused" in res.stdout

    # `harness report` rebuilds the same table from the records alone
    (out / "report.md").unlink()
    rebuilt = run_cli("report", str(out))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (out / "report.md").read_text() == report

    # dry run on the finished store: everything done
    dry = run_cli("run", "specs/demo.yaml", *TINY, "--store", str(tmp_path / "store"), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "to do" not in dry.stdout and dry.stdout.count("done") >= 19


@pytest.mark.slow
def test_demo_learns_pretrained_frozen_encoders_beat_random(tmp_path):
    """At the demo's own settings (one fold to save time), with one seed and the same
    fine-tuning budget for every row:

    * full fine-tuning from scratch reaches a clearly non-zero PQ and beats the frozen random
      encoder (the harness learns at all);
    * SimCLR's and PRICon's pretraining losses fall, and their frozen encoders each beat the
      frozen random encoder (pretraining transfers).
    """
    out = tmp_path / "out"
    res = run_cli("run", "specs/demo.yaml", "--set", "folds=[fold1]", "--store",
                  str(tmp_path / "store"), "--output", str(out), "--quiet", timeout=1800)
    assert res.returncode == 0, res.stderr
    rows = {(r["method"], r["protocol"]): r["mean"]
            for r in json.loads((out / "report.json").read_text())["rows"]}
    random_frozen = rows[("scratch", "frozen")]
    assert rows[("scratch", "full")] > 0.08, rows
    assert rows[("scratch", "full")] > random_frozen + 0.02, rows
    for method in ("simclr", "pricon"):
        assert rows[(method, "frozen")] > random_frozen + 0.01, (method, rows)

    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    for method in ("simclr", "pricon"):
        pre = next(r for r in records if r["method"] == method)["upstream"]["pretrain"]
        assert pre["final_loss"] < pre["first_loss"] - 0.1, (method, pre)
