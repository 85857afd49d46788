"""The one training loop: a momentum-target method (BYOL-like) through it, checked against a
hand computation; SIGTERM mid-epoch and resume give bit-identical weights; the loop's own
mechanics (finiteness message, clipping, accumulation, time-gated checkpoints, handlers)."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from byol_toy import TAU0, ToyBYOL, run
from harness.engine import loop as loop_mod
from harness.engine.loop import IterationSource, TrainLoop, optimizer_steps
from harness.engine.runtime import Checkpoint

HERE = Path(__file__).parent


def test_momentum_target_matches_a_hand_computation(tmp_path):
    method = ToyBYOL()
    result = run(tmp_path / "work", tmp_path / "out", method)
    total = 2 * (12 // 4)  # epochs x batches per epoch
    assert result["steps"] == total
    assert method.seen == [(k, total) for k in range(total)]
    assert [s for s, _, _ in method.online] == list(range(total))

    target = {k: v.clone() for k, v in method.initial_target.items()}
    for step, _, online in method.online:  # tau_k = 1 - (1 - tau0) (cos(pi k / K) + 1) / 2
        tau = 1.0 - (1.0 - TAU0) * (math.cos(math.pi * step / total) + 1.0) / 2.0
        target = {k: target[k] * tau + online[k] * (1.0 - tau) for k in target}
    saved = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    for k, v in target.items():
        torch.testing.assert_close(saved[f"target.{k}"], v, rtol=1e-6, atol=1e-7)
    assert not torch.equal(saved["target.weight"], method.initial_target["weight"])


def _script(work: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "byol_toy.py"), str(work), str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_mid_epoch_then_resume_is_bit_identical(tmp_path):
    clean = _script(tmp_path / "w1", tmp_path / "o1")  # runs alongside the interrupted one
    work = tmp_path / "w2"
    proc = _script(work, tmp_path / "o2", "4")  # step 4 of 6 = epoch 2, batch 2 of 3
    deadline = time.time() + 120
    while not (work / "ready").exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGTERM: checkpoint written at batch 5/6" in err
    state = torch.load(work / "checkpoint.pt", weights_only=False)
    assert state["position"] == 5 and state["epoch"] == 1  # mid-epoch
    assert not (tmp_path / "o2" / "model.pt").exists()

    resumed = _script(work, tmp_path / "o2")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0 and "resuming from epoch 1 batch 2" in err, err
    assert clean.wait(timeout=120) == 0
    a = torch.load(tmp_path / "o1" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "o2" / "model.pt", weights_only=True)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# --- the loop's mechanics on a linear model ----------------------------------------------------

def _loop(tmp_path, *, losses=None, total=4, period=2, **kw) -> TrainLoop:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    data = [torch.randn(2, 3) for _ in range(total)]

    def step_fn(batch, info):
        loss = model(batch).pow(2).mean()
        return (loss * float("nan") if losses and info.batch_index in losses else loss), {"seen": info.step}

    return TrainLoop(label="toy stage", models={"model": model}, optimizer=opt, scheduler=sched,
                     scaler=torch.amp.GradScaler("cuda", enabled=False), step_fn=step_fn,
                     source=IterationSource(lambda start: data[start:], total, period),
                     checkpoint=Checkpoint(tmp_path), quiet=True, **kw)


def test_non_finite_loss_names_the_stage_and_step(tmp_path):
    with pytest.raises(FloatingPointError, match=r"^toy stage: loss is nan at step 3$"):
        _loop(tmp_path, losses={2}).run()


def test_losses_are_read_every_n_batches_and_the_first_bad_step_is_named(tmp_path, monkeypatch):
    reads = []
    real_read = TrainLoop._read
    monkeypatch.setattr(TrainLoop, "_read", lambda self: (
        reads.append((self.position, len(self._unread))) if self._unread else None, real_read(self))[1])
    loop = _loop(tmp_path, total=7, period=7, read_every=3)
    loop.run()
    # one transfer per 3 batches and at the period's end; none in between
    assert reads == [(3, 3), (6, 3), (7, 1)]
    assert loop.history == [] and loop._count == 0  # the period's sums went to its means
    reads.clear()
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 5$"):
        _loop(tmp_path / "nan", losses={4, 5}, total=8, period=8, read_every=3).run()
    assert reads == [(3, 3), (6, 3)]  # caught at the read after batch 6, the first bad named


def test_period_means_equal_per_batch_float_reads(tmp_path):
    means = []
    loop = _loop(tmp_path, total=6, period=3, read_every=2)
    loop.hooks.append(type("H", (loop_mod.Hook,), {
        "after_period": lambda self, lp, period, m: means.append(m)})())
    values = []
    real_step = loop.step_fn
    loop.step_fn = lambda b, i: (lambda out: (values.append(float(out[0].detach())), out)[1])(real_step(b, i))
    loop.run()
    assert [m["loss"] for m in means] == [sum(values[:3]) / 3, sum(values[3:]) / 3]
    assert [m["seen"] for m in means] == [1.0, 4.0]  # steps 0, 1, 2 and 3, 4, 5


def test_gradient_clipping_and_accumulation(tmp_path):
    seen = []
    loop = _loop(tmp_path, grad_clip_norm=1e-3, accumulation=2, total=6, period=3)
    loop.hooks.append(type("H", (loop_mod.Hook,), {"after_step": lambda self, s, t: seen.append((s, t))})())
    before = loop.models["model"].weight.detach().clone()
    loop.run()
    # 2 periods of 3 batches: steps after batches 2, 3 (period end), 5, 6
    assert optimizer_steps(6, 3, 2) == 4 and seen == [(0, 4), (1, 4), (2, 4), (3, 4)]
    moved = (loop.models["model"].weight - before).norm()
    assert moved <= 4 * 0.1 * 1e-3 * (1 + 1e-5)  # each step moves lr x the clipped norm at most


def test_checkpoints_by_training_time_keep_one_file(tmp_path, monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr(loop_mod.time, "monotonic", lambda: clock["t"])
    writes = []
    loop = _loop(tmp_path, total=6, period=3, checkpoint_every_s=10.0)
    real_save = loop.save
    monkeypatch.setattr(loop, "save", lambda: (writes.append(loop.position), real_save()))
    real_step = loop.step_fn
    loop.step_fn = lambda batch, info: (clock.__setitem__("t", clock["t"] + 4.0), real_step(batch, info))[1]
    loop.run()
    assert writes == [3, 6]  # 12 s of training at batch 3 (>= 10 s), then the end state
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    # a rerun finds the end state and trains nothing
    again = _loop(tmp_path, total=6, period=3)
    again.run()
    assert again.start == 6


def test_signal_handlers_are_restored(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    _loop(tmp_path).run()
    assert signal.getsignal(signal.SIGTERM) is before and not loop_mod.interrupt_requested()
