"""Calibration runs: a stage cut short after a few batches of each of its loops, timed, so that
``harness run SPEC --dry-run --calibrate`` can estimate what the whole stage costs on this device
(:mod:`harness.execute.calibrate`).

The two loops every stage's compute goes through take part: the training loop
(:class:`harness.engine.loop.TrainLoop`) and batched inference (:func:`harness.engine.evaluate.predict`).
While :func:`calibrating` is active each of them asks :func:`meter` for a :class:`Meter` and
ticks it after every batch; the meter times the first batch apart (loader start, cuDNN autotuning,
compilation: paid once per loop) and says stop once ``steps`` more batches are timed. A stopped
training loop ends as if its last period ended there (so the stage writes its artifact from the
partly trained model, which only a calibration's scratch store ever holds); a stopped inference
yields background for the remaining images without computing them. The stage's own time outside
its loops (model building, data, metrics) is measured whole.

Not timed: the per-epoch loader restart of later epochs and periodic checkpoint writes.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch


@dataclass
class Meter:
    """One loop's timing: ``total`` batches planned; ``first_s`` the first batch, ``rest_s`` the
    ``done - 1`` batches after it."""

    label: str
    kind: str  # "train" or "predict"
    total: int
    steps: int
    done: int = 0
    first_s: float = 0.0
    rest_s: float = 0.0
    _last: float = field(default_factory=lambda: time.perf_counter())

    def tick(self) -> bool:
        """After a batch: True when the loop should stop here."""
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the batch's kernels, not just their launch
        now = time.perf_counter()
        if self.done == 0:
            self.first_s = now - self._last
        else:
            self.rest_s += now - self._last
        self._last = now
        self.done += 1
        return self.done > self.steps and self.done < self.total

    @property
    def loop_s(self) -> float:
        return self.first_s + self.rest_s

    def estimate_s(self) -> float:
        """The whole loop: its first batch plus the others at the timed rate."""
        if self.done <= 1:
            return self.first_s * max(1, self.total)
        return self.first_s + (self.total - 1) * self.rest_s / (self.done - 1)

    def describe(self) -> dict[str, object]:
        return {"label": self.label, "kind": self.kind, "batches": self.total, "timed": self.done,
                "first_s": round(self.first_s, 4),
                "per_batch_s": round(self.rest_s / (self.done - 1), 6) if self.done > 1 else None,
                "estimate_s": round(self.estimate_s(), 3)}


@dataclass
class Calibration:
    steps: int
    meters: list[Meter] = field(default_factory=list)

    def estimate_s(self, wall_s: float) -> float:
        """The stage's estimate from its calibration run of ``wall_s`` seconds."""
        outside = max(0.0, wall_s - sum(m.loop_s for m in self.meters))
        return outside + sum(m.estimate_s() for m in self.meters)


_active: list[Calibration] = []


@contextmanager
def calibrating(steps: int) -> Iterator[Calibration]:
    """Within: every training loop and inference stops after ``steps`` timed batches (plus the
    first, untimed one)."""
    cal = Calibration(max(1, steps))
    _active.append(cal)
    try:
        yield cal
    finally:
        _active.remove(cal)


def meter(label: str, kind: str, total: int) -> Meter | None:
    """A meter for a loop of ``total`` batches starting now, or None outside a calibration."""
    if not _active or total <= 0:
        return None
    m = Meter(label, kind, total, _active[-1].steps)
    _active[-1].meters.append(m)
    return m
