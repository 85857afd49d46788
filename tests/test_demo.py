"""The README's demo through the CLI: a tiny version always, the real one (learning) as `slow`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import REPO, run_cli

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


#: The demo's pretraining (its own settings and seed), then one frozen fine-tuning epoch per row
#: (the cells need one; the probe reads the encoders, not the fine-tuned models).
PRETRAIN_ONLY = ["--set", "folds=[fold1]", "--set", "protocols=[frozen]", "--set", "finetune.epochs=1"]
#: Required probe gain (R^2) of each pretrained encoder over the random one.
PROBE_MARGIN = {"simclr": 0.045, "pricon": 0.045}


@pytest.mark.slow
def test_demo_pretraining_beats_random_encoder(tmp_path):
    """The demo's SimCLR and PRICon pretraining (its settings, one seed) learns: a linear probe
    (tests/probes.py: ridge from layer2 and layer3 features to each cell's class fractions,
    batch-norm statistics recomputed on the images for every encoder, fitted on folds 2+3, mean
    R^2 on fold 1) scores each pretrained encoder above the random encoder of the same seed.

    Measured (thread counts moving floats the way another CPU does), gain over the random
    encoder (0.289-0.353): 2026-12-01, AMD EPYC, seeds 0-2 x 1 and 2 threads: SimCLR +0.146 to
    +0.289, PRICon +0.141 to +0.250; 2026-12-07, a CI machine (AMD EPYC), seeds 0-2 with 1
    thread and seed 0 with 2: SimCLR +0.146 to +0.289, PRICon +0.149 to +0.239.
    The margin, 0.045, is under a third of the smallest gain (0.141: 3.1x).

    Not asserted: the pretraining losses' fall. At this budget it is not steady enough: first- to
    last-epoch mean, SimCLR 0.015-0.233 and PRICon 0.008-0.408 over the runs above (PRICon's
    seed 0 with 1 thread falls by 0.008 while its probe gain is +0.157).

    Why not the frozen fine-tuning's mPQ, which the demo reports: at this budget its gain over
    the random encoder is of the size of its spread. Fold 1, 25 epochs, random 0.075-0.079:
    SimCLR 0.109 (seed 0) but 0.079 (seed 1); PRICon 0.099 and 0.079 here, 0.151 on one other
    machine and 0.091 on another. Fine-tuning adds its own chaos; the probe is a closed-form fit,
    the same on every machine for a given encoder, so only the pretraining's spread remains.
    """
    from probes import probe_score

    from harness.plugins import build_registry
    from harness.data.open import load_arrays, open_dataset
    from harness.spec import load_spec
    from harness.store import ArtifactStore

    out, store = tmp_path / "out", tmp_path / "store"
    res = run_cli("run", "specs/demo.yaml", *PRETRAIN_ONLY, "--store", str(store),
                  "--output", str(out), "--quiet", timeout=1800)
    assert res.returncode == 0, res.stderr
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in (out / "records").glob("*.json"))}
    registry = build_registry()
    rspec = load_spec(REPO / "specs" / "demo.yaml", PRETRAIN_ONLY[1::2], registry=registry)
    arrays = load_arrays(open_dataset(rspec, registry, ArtifactStore(store)))
    groups = np.asarray(arrays.groups)
    train, test = np.flatnonzero(groups != "fold1"), np.flatnonzero(groups == "fold1")

    def probe(method: str) -> float:
        stages = records[method]["stages"]
        encoder = stages[[s["kind"] for s in stages].index("finetune") - 1]
        return probe_score(store / "stages" / encoder["kind"] / encoder["key"], arrays.images,
                           arrays.classes, 6, train, test)

    scores = {m: probe(m) for m in ("scratch", "simclr", "pricon")}
    print("probe R^2", scores)
    for method in ("simclr", "pricon"):
        pre = records[method]["upstream"]["pretrain"]
        print(method, "loss", pre["first_loss"], "->", pre["final_loss"])
        assert scores[method] > scores["scratch"] + PROBE_MARGIN[method], (method, scores)
