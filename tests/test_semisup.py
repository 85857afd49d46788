"""The semi-supervised (mean-teacher) loop: EMA arithmetic, the unsupervised loss, the teacher
getting no gradients, the saved artifact, resume, spec validation, a tiny end-to-end run of the
three methods through the CLI, and (``slow``) that each method learns on the synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import harness.engine.semisup as semisup
from harness.data.base import LabeledArrays
from harness.data.torchdata import SegmentationSamples
from harness.engine.context import StageContext
from harness.engine.model import build_unet
from harness.engine.semisup import (confidence_weighted_ce, ema_update, strong_augment, thesis_augment,
                                    train_semisupervised)
from harness.engine.semisup_data import IterationBatches
from harness.errors import DataError, SpecError
from harness.spec import FinetuneSettings, load_spec
from harness_builtin.methods.classmix import ClassMix
from harness_builtin.methods.cutmix import CutMix
from harness_builtin.methods.reco import ReCo

from support import run_cli, write_spec


# --- EMA and losses ----------------------------------------------------------------------------

def test_ema_update_arithmetic_and_buffers():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    teacher = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    teacher[1].running_mean.fill_(7.0)
    s0 = [p.detach().clone() for p in student.parameters()]

    assert ema_update(teacher, student, 0, 0.99) == 0.0  # step 0: the teacher becomes the student
    for t, s in zip(teacher.parameters(), s0):
        assert torch.equal(t, s)
    assert torch.all(teacher[1].running_mean == 7.0)  # buffers are not averaged

    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = [p.detach().clone() for p in teacher.parameters()]
    assert ema_update(teacher, student, 1, 0.99) == pytest.approx(0.5)  # min(1 - 1/2, 0.99)
    for t, b, s in zip(teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.5 * b + 0.5 * s)

    before = [p.detach().clone() for p in teacher.parameters()]
    assert ema_update(teacher, student, 9, 0.99) == pytest.approx(0.9)
    for t, b, s in zip(teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * s)
    before = [p.detach().clone() for p in teacher.parameters()]
    assert ema_update(teacher, student, 5000, 0.99) == pytest.approx(0.99)  # capped
    for t, b, s in zip(teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.99 * b + 0.01 * s)


def test_confidence_weighted_ce_matches_the_reference_formula():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 2, 2)
    target = torch.randint(0, 3, (2, 2, 2))
    conf = torch.tensor([[[0.99, 0.5], [0.98, 0.1]], [[0.2, 0.3], [0.97, 0.4]]])
    per_pixel = nn.functional.cross_entropy(logits, target, reduction="none")
    weights = torch.tensor([2 / 4, 1 / 4])  # pixels with confidence >= 0.97 / valid pixels
    expected = (weights[:, None, None] * per_pixel).mean()  # every loss is > 0 here
    assert float(confidence_weighted_ce(logits, target, conf, 0.97)) == pytest.approx(float(expected))
    # pixels with zero loss drop out of the mean; a zero weight still counts in it (ReCo)
    assert float(confidence_weighted_ce(logits, target, torch.zeros_like(conf), 0.97)) == 0.0
    sure = torch.zeros(1, 3, 2, 2)
    sure[0, 0] = 100.0  # class 0 certain: loss 0 where the target is 0
    tgt = torch.tensor([[[0, 1], [0, 2]]])
    per = nn.functional.cross_entropy(sure, tgt, reduction="none")
    w = 0.5
    got = confidence_weighted_ce(sure, tgt, torch.tensor([[[1.0, 1.0], [0.0, 0.0]]]), 0.97)
    assert float(got) == pytest.approx(float(w * per[per > 0].mean()))


def test_the_one_process_shard_is_the_identity_bit_for_bit():
    """The step is written once over a shard; alone (world 1) its losses are the one-process
    formulas exactly (values and gradients), so single-process results did not change when the
    one- and N-process steps became one (checked also on whole tiny runs against main: equal
    weights and logs)."""
    from harness.engine.semisup import supervised_ce
    from harness.engine.semisup_ddp import Shard

    shard = Shard()
    for seed in range(5):
        torch.manual_seed(seed)
        logits = torch.randn(3, 4, 9, 7, requires_grad=True)
        target = torch.randint(-1, 4, (3, 9, 7))
        conf = torch.rand(3, 9, 7)
        ref_sup = nn.functional.cross_entropy(logits, target, ignore_index=-1)
        (ref_grad,) = torch.autograd.grad(ref_sup, logits)
        got_sup = supervised_ce(logits, target, target, shard)
        (grad,) = torch.autograd.grad(got_sup, logits)
        assert torch.equal(got_sup, ref_sup) and torch.equal(grad, ref_grad)

        per = nn.functional.cross_entropy(logits, target, reduction="none", ignore_index=-1)
        weight = conf.reshape(3, -1).ge(0.5).sum(-1) / (target >= 0).reshape(3, -1).sum(-1).clamp(min=1)
        ref_unsup = (weight[:, None, None] * per)[per > 0].mean()  # the one-process form before
        (ref_grad,) = torch.autograd.grad(ref_unsup, logits)
        got_unsup = confidence_weighted_ce(logits, target, conf, 0.5, shard)
        (grad,) = torch.autograd.grad(got_unsup, logits)
        assert torch.equal(got_unsup, ref_unsup) and torch.equal(grad, ref_grad)
    x = torch.randn(4, 2)
    assert shard.take(x) is x and shard.gather(x) is x
    outputs = {"logits": x}
    assert shard.gathered(outputs)[0] is outputs and shard.every_output_used(x, outputs) is x


def test_strong_augment_moves_image_label_and_confidence_together():
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (6, 16, 16))
    images = (labels.float() * 0.25)[:, None].expand(6, 3, 16, 16).clone()
    confidence = labels.float() / 100
    changed = 0
    for _ in range(5):
        ai, al, ac = strong_augment(images, labels, confidence, thesis_augment(square=True))
        assert torch.equal(torch.round(ac * 100).long(), al)  # confidences follow the labels
        assert torch.equal(torch.round(ai * 4).long(), al[:, None].expand_as(ai))  # image too
        changed += int(not torch.equal(al, labels))
    assert changed > 0


# --- the loop on tiny arrays ---------------------------------------------------------------------

def _arrays(n=6, size=32, classes=3, seed=0) -> LabeledArrays:
    rng = np.random.default_rng(seed)
    cls = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for _ in range(4):
            y, x = rng.integers(0, size - 8, 2)
            cls[i, y:y + 8, x:x + 8] = rng.integers(1, classes)
    images = (rng.integers(0, 60, (n, size, size, 3)) + 150 - 60 * cls[..., None]).astype(np.uint8)
    return LabeledArrays(images=images, instances=cls.astype(np.int32), classes=cls,
                         ids=[f"s{i}" for i in range(n)], tissues=["t"] * n, groups=["fold1"] * n)


def _ctx(tmp_path, name="stage") -> StageContext:
    out = tmp_path / name / "out"
    out.mkdir(parents=True, exist_ok=True)
    return StageContext(out=out, work=tmp_path / name / "work", inputs={},
                        device=torch.device("cpu"), label=name, quiet=True)


def _unlabeled(n=4, size=40, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3)).astype(np.uint8)


SETTINGS = FinetuneSettings(encoder="resnet18", amp=False)


def test_teacher_gets_no_gradients_and_is_saved_as_a_plain_unet(tmp_path, monkeypatch):
    calls = []
    real = semisup.ema_update

    def checked(teacher, student, step, max_decay):
        # right after backward + optimiser step: the student has gradients, the teacher none
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
        assert any(p.grad is not None for p in student.parameters())
        calls.append(step)
        return real(teacher, student, step, max_decay)

    monkeypatch.setattr(semisup, "ema_update", checked)
    method = ReCo(ReCo.Config(iterations=2, batch_size=2, num_queries=4, num_negatives=8))
    arrays = _arrays()
    ctx = _ctx(tmp_path)
    result = train_semisupervised(ctx, method=method, arrays=arrays, train_ids=arrays.ids[:4],
                                  unlabeled_images=_unlabeled(), num_classes=3, settings=SETTINGS, seed=0)
    assert calls == [0, 1]
    assert result["normalization"] == {"mode": "encoder", "mean": [0.5] * 3, "std": [0.5] * 3, "scale": 1.0}
    assert result["iterations"] == 2 and result["crop_size"] == [32, 32]
    assert result["first_sup_loss"] is not None and result["final_loss"] is not None

    # model.pt is the teacher's U-Net (no representation head) and loads strictly
    state = torch.load(ctx.out / "model.pt", weights_only=True)
    unet = build_unet("resnet18", 3)
    unet.load_state_dict(state, strict=True)
    ckpt = torch.load(ctx.work / "checkpoint.pt", weights_only=True)
    teacher_unet = {k[len("unet."):]: v for k, v in ckpt["teacher"].items() if k.startswith("unet.")}
    assert set(teacher_unet) == set(state) and any(k.startswith("representation.") for k in ckpt["teacher"])
    assert all(torch.equal(teacher_unet[k], state[k]) for k in state)
    assert not all(torch.equal(ckpt["student"]["unet." + k], state[k]) for k in state)
    assert json.loads((ctx.out / "train_log.json").read_text())[-1]["iteration"] == 2


def test_iteration_batches_depend_only_on_seed_and_iteration():
    arrays = _arrays()
    samples = SegmentationSamples(arrays, arrays.ids, thesis_augment(True, to_float=True))
    a = IterationBatches(samples, _unlabeled(), (32, 32), 2, 3, seed=5)
    b = IterationBatches(samples, _unlabeled(), (32, 32), 2, 3, seed=5)
    first = [a[t] for t in (0, 3, 7)]
    second = [b[t] for t in (7, 3, 0)][::-1]
    for x, y in zip(first, second):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert first[0]["image_u"].shape == (3, 3, 32, 32) and first[0]["label_l"].shape == (2, 32, 32)
    assert not torch.equal(first[0]["image_l"], first[1]["image_l"])
    # one epoch of the labeled set uses every image once
    idx = a._order_l(0, len(samples))
    assert sorted(idx) == list(range(len(samples)))


def test_resume_continues_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CHECKPOINT_EVERY_S", "0")  # a checkpoint every iteration
    arrays = _arrays()
    kw = dict(arrays=arrays, train_ids=arrays.ids, unlabeled_images=_unlabeled(), num_classes=3,
              settings=SETTINGS, seed=3)
    cfg = ClassMix.Config(iterations=3, batch_size=2)
    whole = _ctx(tmp_path, "whole")
    train_semisupervised(whole, method=ClassMix(cfg), **kw)

    class Crash(ClassMix):
        calls = 0

        def mix(self, *args):
            Crash.calls += 1
            if Crash.calls == 3:
                raise KeyboardInterrupt
            return super().mix(*args)

    broken = _ctx(tmp_path, "broken")
    with pytest.raises(KeyboardInterrupt):
        train_semisupervised(broken, method=Crash(cfg), **kw)
    assert torch.load(broken.work / "checkpoint.pt", weights_only=True)["position"] == 2
    result = train_semisupervised(broken, method=ClassMix(cfg), **kw)
    assert result["resumed_from_iteration"] == 2
    a = torch.load(whole.out / "model.pt", weights_only=True)
    b = torch.load(broken.out / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unlabeled_tiles_smaller_than_the_crop_are_an_error(tmp_path):
    arrays = _arrays()
    with pytest.raises(DataError, match="smaller than the labeled training size"):
        train_semisupervised(_ctx(tmp_path), method=CutMix(CutMix.Config(iterations=1, batch_size=2)),
                             arrays=arrays, train_ids=arrays.ids, unlabeled_images=_unlabeled(size=24),
                             num_classes=3, settings=SETTINGS, seed=0)


# --- spec and CLI ------------------------------------------------------------------------------

def test_frozen_protocol_is_rejected_for_cutmix(tmp_path):
    path = write_spec(tmp_path, "name: s\ndataset: synthetic\nmethods: [cutmix]\n"
                                "protocols: [frozen, full]\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    (line,) = info.value.problems
    assert "methods.cutmix" in line and "protocol 'frozen' is not possible" in line
    assert "semi-supervised" in line and "no separate encoder stage to freeze" in line
    ok = write_spec(tmp_path, "name: s\ndataset: synthetic\nmethods: [cutmix, classmix, reco]\n"
                              "protocols: [full]\n", name="ok.yaml")
    assert set(load_spec(ok).method_configs) == {"cutmix", "classmix", "reco"}


TINY_SEMISUP = """
name: semitiny
dataset:
  name: synthetic
  image_size: 32
  images_per_fold: 6
  unlabeled_images: 4
  unlabeled_size: 40
methods:
  cutmix: {iterations: 3, batch_size: 2}
  classmix: {iterations: 3, batch_size: 2}
  reco: {iterations: 3, batch_size: 2, num_queries: 8, num_negatives: 16}
protocols: [full]
folds: [fold1]
finetune:
  batch_size: 2
  eval_batch_size: 16
"""


def test_three_methods_end_to_end_via_cli(tmp_path):
    out = tmp_path / "out"
    res = run_cli("run", str(write_spec(tmp_path, TINY_SEMISUP)), "--store", str(tmp_path / "store"),
                  "--output", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert {(r["method"], r["protocol"]) for r in rows} == {(m, "full") for m in ("cutmix", "classmix", "reco")}
    report = (out / "report.md").read_text()
    assert "| cutmix |" in report and "| classmix |" in report and "| reco |" in report


# --- learning (slow) -------------------------------------------------------------------------
# CPU scale (about 2.5-3.5 minutes for the three methods on 2 cores): 60 iterations instead of
# 80,000, so a larger lr (2e-3, also for ReCo) and a faster teacher (EMA 0.95; 0.99 would
# average over more iterations than the run has), and fewer ReCo queries/negatives. Measured
# here (mPQ, instance variant, fold1): cutmix 0.086, classmix 0.083, reco 0.081; supervised
# loss 2.33 -> 0.24.

LEARN = """
name: semilearn
dataset:
  name: synthetic
  image_size: 64
  images_per_fold: 24
  unlabeled_images: 24
  unlabeled_size: 96
methods:
  cutmix: {iterations: ITER, batch_size: 4, lr: 0.002, ema_decay: 0.95}
  classmix: {iterations: ITER, batch_size: 4, lr: 0.002, ema_decay: 0.95}
  reco: {iterations: ITER, batch_size: 4, lr: 0.002, ema_decay: 0.95, num_queries: 64,
         num_negatives: 128}
protocols: [full]
folds: [fold1]
finetune:
  eval_batch_size: 24
metric:
  name: mpq
  pq_variant: instance
"""
LEARN_ITERATIONS = 60
#: Required supervised-loss fall (fraction of the first) and teacher mPQ (see the docstring).
SUP_LOSS_FALL, PQ_MARGIN = 0.25, 0.02


@pytest.mark.slow
def test_each_method_learns_on_synthetic(tmp_path):
    """CPU scale: each method's supervised loss falls and its teacher's PQ is clearly above 0
    (after one iteration every teacher scores mPQ 0.0).

    Measured (2026-12-07, AMD EPYC; seeds 0, 1, 2 with 1 thread, seeds 0 and 2 with 2):
    mPQ 0.0758-0.1253 over the three methods, final / first supervised loss 0.101-0.118 (a fall
    of 0.882 at the least). Margins, under a third of the smallest values: mPQ 0.02 (3.8x) and a fall of 0.25
    (final < 0.75 x first; 3.5x). The earlier margins (mPQ 0.04, a fall of 0.5) were within 2x
    of those minima."""
    out, store = tmp_path / "out", tmp_path / "store"
    spec = write_spec(tmp_path, LEARN.replace("ITER", str(LEARN_ITERATIONS)))
    # a deadlock guard, not a speed limit: 465 s at 1 thread and over 600 s at 2 threads on 2
    # cores at a load of 7 (idle: a few minutes); the demo and hover checks allow as long
    res = run_cli("run", str(spec), "--store", str(store), "--output", str(out), "--quiet",
                  timeout=1800)
    assert res.returncode == 0, res.stderr
    rows = {r["method"]: r["mean"] for r in json.loads((out / "report.json").read_text())["rows"]}
    results = {}
    for meta in (store / "stages" / "semisup").glob("*/meta.json"):
        result = json.loads(meta.read_text())["result"]
        results[result["method"]] = result
    print({m: (rows[m], results[m]["first_sup_loss"], results[m]["final_sup_loss"],
               results[m]["iterations_per_second"]) for m in rows})
    for method in ("cutmix", "classmix", "reco"):
        r = results[method]
        assert r["final_sup_loss"] < (1 - SUP_LOSS_FALL) * r["first_sup_loss"], (method, r)
        assert rows[method] > PQ_MARGIN, (method, rows[method])
