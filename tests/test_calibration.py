"""``harness run SPEC --dry-run --calibrate``: stages cut short after a few timed batches, their
durations extrapolated, nothing published (harness/engine/metering.py, harness/execute/calibrate.py).
How close the estimates come is a benchmark (benchmarks/test_calibration_accuracy.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from executor_specs import harness, one_cell
from harness.engine import metering
from harness.engine.metering import Calibration, Meter, calibrating


class _Clock:
    def __init__(self, *steps: float):
        self.t, self.steps = 0.0, list(steps)

    def __call__(self) -> float:
        return self.t

    def advance(self) -> None:
        self.t += self.steps.pop(0)


def test_meter_times_the_first_batch_apart_and_extrapolates_the_rest(monkeypatch):
    clock = _Clock(3.0, 1.0, 1.0, 2.0)  # a slow first batch (loader start), then 1-2 s
    monkeypatch.setattr(metering.time, "perf_counter", clock)
    m = Meter("x", "train", total=101, steps=3)
    stops = []
    for _ in range(4):
        clock.advance()
        stops.append(m.tick())
    assert stops == [False, False, False, True]  # the first + 3 timed batches, then stop
    assert m.first_s == 3.0 and m.rest_s == 4.0
    assert m.estimate_s() == pytest.approx(3.0 + 100 * 4.0 / 3)
    # the stage's time outside its loops (10 s of wall, 7 in the loop) is added whole
    cal = Calibration(3, [m])
    assert cal.estimate_s(10.0) == pytest.approx(3.0 + 3.0 + 100 * 4.0 / 3)


def test_a_loop_shorter_than_the_budget_runs_whole():
    m = Meter("x", "predict", total=2, steps=5)
    assert [m.tick(), m.tick()] == [False, False]


def test_no_meter_outside_a_calibration():
    assert metering.meter("x", "train", 10) is None
    with calibrating(2):
        assert metering.meter("x", "train", 10) is not None
    assert metering.meter("x", "train", 10) is None


def test_cut_short_inference_yields_background_for_the_images_it_skips():
    from harness.data.torchdata import Normalizer
    from harness.engine.evaluate import predict
    from harness.engine.runtime import Precision

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.ReLU(), torch.nn.Conv2d(3, 3, 1))
    torch.nn.init.constant_(model[2].bias, 0.0)
    model[2].bias.data[2] = 10.0  # class 2 everywhere on computed images
    images = np.random.default_rng(0).integers(0, 255, (10, 32, 32, 3), dtype=np.uint8)
    norm = Normalizer({"mean": [0.5] * 3, "std": [0.5] * 3}, "half")
    cpu = torch.device("cpu")
    full = list(predict(model, images, range(10), norm, cpu, 2, Precision(cpu, False), quiet=True))
    with calibrating(1) as cal:
        short = list(predict(model, images, range(10), norm, cpu, 2, Precision(cpu, False), quiet=True))
    assert [s for s, _ in short] == [s for s, _ in full] == [0, 2, 4, 6, 8]
    assert all((p == 2).all() for _, p in short[:2])  # computed: the first + 1 timed batch
    assert all((p == 0).all() for _, p in short[2:])  # skipped: background
    assert cal.meters[0].total == 5 and cal.meters[0].done == 2


def test_dry_run_calibrate_estimates_every_stage_and_publishes_nothing(tmp_path):
    spec = one_cell(tmp_path, epochs=6)
    store = tmp_path / "store"
    proc = harness("run", str(spec), "--dry-run", "--calibrate", "--calibrate-steps", "2",
                   store=store)
    assert proc.returncode == 0, proc.stderr
    assert "calibrating 3 stage(s)" in proc.stdout + proc.stderr
    assert "calibrated: 2 steps" in proc.stdout
    assert not list((store / "stages").glob("*/*")), "a calibration published a stage"
    assert not list((store / "tmp").glob("calibration-*")), "the scratch store was left behind"
    saved = {p.parent.parent.name: json.loads(p.read_text())
             for p in (store / "calibration").glob("*/*/*.json")}
    assert set(saved) == {"encoder", "finetune", "evaluate"}
    (train,) = saved["finetune"]["loops"]
    # 16 training images (2 folds of 8) at batch 8: 2 batches x 6 epochs; 1 untimed + 2 timed
    assert (train["kind"], train["batches"], train["timed"]) == ("train", 12, 3)
    assert saved["finetune"]["seconds"] > saved["finetune"]["calibration_s"] * 0.9
    assert all(d["seconds"] > 0 for d in saved.values())

    again = harness("run", str(spec), "--dry-run", "--calibrate", store=store)
    assert again.returncode == 0, again.stderr
    assert "calibrating" not in again.stdout + again.stderr  # the stored calibrations serve
    assert "calibrated: 2 steps" in again.stdout and "without an estimate" not in again.stdout


def test_calibrate_needs_dry_run(tmp_path):
    proc = harness("run", str(one_cell(tmp_path)), "--calibrate", store=tmp_path / "s")
    assert proc.returncode == 2
    assert "--calibrate: only with --dry-run" in proc.stderr


def test_estimates_prefer_records_of_the_same_process_count_and_scale_others():
    from types import SimpleNamespace

    from harness.execute.schedule import estimate

    stage = SimpleNamespace(config={"epochs": 8})
    def meta(seconds, world):
        return {"seconds": seconds, "config": {"epochs": 8},
                "provenance": {"device": "cuda:NVIDIA H200", "world_size": world}}
    metas = [meta(30.0, 1), meta(10.0, 4)]
    assert estimate(stage, metas, "cuda:NVIDIA H200", 4) == (10.0, "same config, 1 record(s)")
    assert estimate(stage, metas, "cuda:NVIDIA H200", 1)[0] == 30.0
    seconds, basis = estimate(stage, [meta(10.0, 4)], "cuda:NVIDIA H200", 2)
    assert seconds == 20.0 and "scaled from 4 to 2 process(es)" in basis
    assert estimate(stage, metas, "cpu", 1) == (None, "no record on cpu")
