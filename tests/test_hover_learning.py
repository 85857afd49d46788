"""The ``hover`` head separates touching nuclei that the ``semantic`` head's connected components
merge: at the same training budget on synthetic data with crowded nuclei, its bPQ (``instance``
variant) is higher.

Data: ``synthetic`` with ``crowding: 0.7`` (about 52% of nuclei touch another, 32% lie in a
same-class group that connected components merge; 4% with the default generator) and
``nucleus_scale: 2`` (PanNuke-size nuclei, for which HoVer-Net's post-processing is made: at
scale 1, 5-15 px nuclei, even perfect HV maps give few markers), 64 px images, 16 per fold.
Both heads: ``scratch`` ResNet-18 U-Net, ``full``, 20 epochs, batch 8 (80 steps), fold 1.

Measured (bPQ instance variant, fold 1; hover - semantic), seeds 0/1/2:
  OMP_NUM_THREADS=1: semantic 0.1255 / 0.2503 / 0.1336, hover 0.3645 / 0.3141 / 0.4548,
                     gaps 0.2390 / 0.0638 / 0.3212
  OMP_NUM_THREADS=2: semantic 0.1237 / 0.2355 / 0.1538, hover 0.3532 / 0.3157 / 0.4542,
                     gaps 0.2295 / 0.0801 / 0.3004
Spread over seeds x threads: semantic 0.124-0.250, hover 0.314-0.455 (threads move a value by up
to 0.015); gaps 0.064-0.321, mean 0.206. Smallest gap 0.0638 (seed 1, one thread, where semantic
happened to do best); the margin 0.02 is under a third of it, as the developers' guide asks.
The test trains seed 0 (gaps 0.239 / 0.230) at the calling process's thread count: two cells,
a few minutes on 2 cores. (mPQ is not asserted: at 80 steps the NC output classifies no better
than the semantic head, hover 0.101-0.118 vs semantic 0.075-0.157.)
"""

from __future__ import annotations

import json

import pytest

from support import run_cli, write_spec

MARGIN = 0.02

SPEC = """name: hover_vs_semantic
dataset: {name: synthetic, image_size: 64, images_per_fold: 16, unlabeled_images: 4,
          unlabeled_size: 64, crowding: 0.7, nucleus_scale: 2.0}
methods: {scratch: {}}
protocols: [full]
fractions: [1.0]
seeds: [0]
folds: [fold1]
finetune: {encoder: resnet18, epochs: 20, batch_size: 8}
metric: {name: bpq, pq_variant: instance}
"""


@pytest.mark.slow
def test_hover_beats_semantic_on_touching_nuclei(tmp_path):
    spec = write_spec(tmp_path, SPEC)
    bpq = {}
    for head in ("semantic", "hover"):
        out = tmp_path / head
        res = run_cli("run", str(spec), "--store", str(tmp_path / "store"),
                      "--set", f"finetune.head={head}", "--set", f"output={out}", timeout=1800)
        assert res.returncode == 0, res.stderr[-2000:]
        (record,) = (out / "records").glob("*.json")
        bpq[head] = json.loads(record.read_text())["metrics"]["instance"]["bpq"]
    assert bpq["hover"] - bpq["semantic"] > MARGIN, bpq
