"""The ``probe`` protocol (harness/protocols/probe.py, ridge.py): a streamed closed-form ridge
fit equal to the one-shot fit, that scores informative features high and noise low; its cells
carry their own metric in records and the report."""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F

from support import run_cli, write_spec
from harness.protocols import ridge
from harness.protocols.probe import RIDGE, STRIDES

SPEC = """
name: probe_toy
dataset: {name: synthetic, image_size: 64, images_per_fold: 8, unlabeled_images: 0}
methods: [scratch]
protocols: [probe, frozen]
fractions: [1.0]
folds: [fold1]
finetune: {epochs: 1, batch_size: 4, device: cpu, num_workers: 0}
"""


def _fit(x_tr, y_tr, x_te, y_te, batches: int = 1) -> tuple[float, list]:
    fit = ridge.Ridge(y_tr.shape[1], RIDGE)
    for xs, ys in zip(x_tr.chunk(batches), y_tr.chunk(batches)):
        fit.add_train(xs, ys)
    fit.solve()
    for xs, ys in zip(x_te.chunk(batches), y_te.chunk(batches)):
        fit.add_test(xs, ys)
    return fit.r2()


def _one_shot(x_tr, y_tr, x_te, y_te) -> float:
    """The textbook fit on whole matrices: standardise by the training mean and sample std,
    solve (X'X + ridge I) W = X'(Y - mean Y), R^2 about the training mean."""
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    a, b = (x_tr - mu) / sd, (x_te - mu) / sd
    y_mean = y_tr.mean(0)
    w = torch.linalg.solve(a.T @ a + RIDGE * torch.eye(a.shape[1], dtype=a.dtype), a.T @ (y_tr - y_mean))
    return float(1 - ((y_te - y_mean - b @ w) ** 2).sum() / ((y_te - y_mean) ** 2).sum())


def _cells(n: int, informative: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    y = F.one_hot(labels, 3).double()
    noise = torch.randn(n, 6, generator=g, dtype=torch.float64)
    x = torch.cat([y * 2.0 + 0.1 * torch.randn(n, 3, generator=g, dtype=torch.float64), noise], 1) \
        if informative else noise
    return x, y


def test_streamed_fit_equals_the_one_shot_fit_and_separates_signal_from_noise():
    x, y = _cells(600, informative=True)
    whole = _one_shot(x[:400], y[:400], x[400:], y[400:])
    streamed, per_class = _fit(x[:400], y[:400], x[400:], y[400:], batches=7)
    assert abs(streamed - whole) < 1e-9 and streamed > 0.95
    assert all(p > 0.9 for p in per_class)
    xn, yn = _cells(600, informative=False, seed=1)
    assert _fit(xn[:400], yn[:400], xn[400:], yn[400:])[0] < 0.05


def test_levels_probed_are_strides_8_and_16_else_the_deepest_map():
    maps = [torch.zeros(1, c, 64 // s, 64 // s) for c, s in ((3, 1), (0, 2), (64, 4), (128, 8), (256, 16), (512, 32))]
    assert [m.shape[1] for m in ridge.probe_levels(maps, 64, STRIDES)] == [128, 256]
    assert [m.shape[1] for m in ridge.probe_levels([torch.zeros(1, 384, 4, 4)], 56, STRIDES)] == [384]  # a ViT, patch 14


def test_batch_norm_adapts_to_the_training_images():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))

    class Batches:
        def images(self, rows):
            g = torch.Generator().manual_seed(0)
            for _ in rows:
                yield None, torch.randn(2, 3, 8, 8, generator=g) + 5.0

    ridge.adapt_batch_norm(net, Batches(), [0, 1, 2])
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        outs = torch.cat([net[0](torch.randn(2, 3, 8, 8, generator=g) + 5.0) for _ in range(3)])
    assert torch.allclose(net[1].running_mean, outs.mean((0, 2, 3)), atol=1e-4)


def test_probe_cells_run_end_to_end_and_report_their_own_metric(tmp_path):
    spec = write_spec(tmp_path, SPEC)
    res = run_cli("run", str(spec), "--store", str(tmp_path / "store"), "--output", str(tmp_path / "out"),
                  "--quiet", env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    records = {json.loads(p.read_text())["protocol"]: json.loads(p.read_text())
               for p in (tmp_path / "out" / "records").glob("*.json")}
    rec = records["probe"]
    assert [s["kind"] for s in rec["stages"]] == ["encoder", "probe"]
    assert rec["metric"]["name"] == "probe_r2" and rec["metric"]["protocol_metric"]
    assert rec["metric"]["value"] == rec["metrics"]["probe_r2"] and np.isfinite(rec["metric"]["value"])
    assert set(rec["metrics"]["per_level"]) == {"8x8", "4x4"}  # strides 8 and 16 of 64 px
    assert rec["split"]["train_ids"] == records["frozen"]["split"]["train_ids"]
    assert records["frozen"]["metric"]["name"] == "mpq"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["metric"] == "mpq"  # the spec's headline, whatever the cells' order
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| method | frozen | probe (probe_r2) |" in md


def test_probe_rejects_a_hover_head(tmp_path):
    spec = write_spec(tmp_path, SPEC.replace("num_workers: 0}", "num_workers: 0, head: hover}"))
    res = run_cli("validate", str(spec))
    assert res.returncode == 2 and "probe" in res.stderr and "head" in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2, res.stderr
