"""A tiny BYOL-like pretraining method for the loop tests: the target head is an EMA of the
online head with BYOL's momentum schedule tau_k = 1 - (1 - tau0) (cos(pi k / K) + 1) / 2, updated
in ``after_step``. Also runnable as a script (a stage in a subprocess, for the SIGTERM test):
``python byol_toy.py WORK OUT [STOP_AT]``."""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf

from harness.methods import PretrainMethod, PretrainSettings

TAU0 = 0.9


def momentum(step: int, total_steps: int, tau0: float = TAU0) -> float:
    return 1.0 - (1.0 - tau0) * (math.cos(math.pi * step / total_steps) + 1.0) / 2.0


class ToyBYOL(PretrainMethod):
    name = "toy_byol"

    def __init__(self, config=None, stop_at: int | None = None, ready: Path | None = None):
        super().__init__(config or PretrainSettings(epochs=2, batch_size=4, optimizer="sgd", lr=0.05))
        self.stop_at, self.ready = stop_at, ready
        self.seen: list[tuple[int, int]] = []      # (step, total_steps) given to after_step
        self.online: list[tuple[int, int, dict]] = []  # the online head after each step

    def view_config(self):
        from harness.data.view_config import ViewAugmentConfig

        return ViewAugmentConfig(crop_size=32)

    def build_model(self, encoder, encoder_channels):
        model = torch.nn.Module()
        model.encoder = encoder
        model.head = torch.nn.Linear(encoder_channels[-1], 8)
        model.target = copy.deepcopy(model.head)
        for p in model.target.parameters():
            p.requires_grad_(False)
        self.initial_target = copy.deepcopy(model.target.state_dict())
        return model

    def training_step(self, model, batch, num_classes):
        def embed(view, head):
            return head(model.encoder(view)[-1].mean(dim=(2, 3)))

        p = embed(batch["view1"], model.head)
        with torch.no_grad():
            z = embed(batch["view2"], model.target)
        return 2 - 2 * nnf.cosine_similarity(p, z, dim=-1).mean(), {}

    @torch.no_grad()
    def after_step(self, model, step, total_steps):
        self.seen.append((step, total_steps))
        tau = momentum(step, total_steps)
        for t, o in zip(model.target.parameters(), model.head.parameters()):
            t.mul_(tau).add_(o, alpha=1.0 - tau)
        self.online.append((step, total_steps, copy.deepcopy(model.head.state_dict())))
        if step == self.stop_at and self.ready is not None:  # wait here for the SIGTERM
            from harness.engine.loop import interrupt_requested

            self.ready.write_text("ready")
            deadline = time.time() + 60
            while not interrupt_requested() and time.time() < deadline:
                time.sleep(0.01)


def images(n: int = 12, size: int = 32) -> np.ndarray:
    return np.random.RandomState(0).randint(0, 255, (n, size, size, 3), dtype=np.uint8)


def run(work: Path, out: Path, method: ToyBYOL, every_s: float = 1e9) -> dict:
    from harness.engine.context import StageContext
    from harness.engine.pretrain import pretrain

    out.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(out=out, work=work, inputs={}, device=torch.device("cpu"), label="toy_byol",
                       quiet=True, checkpoint_every_s=every_s)
    return pretrain(ctx, method=method, images=images(), masks=None, encoder_name="resnet18",
                    seed=0, num_classes=None)


if __name__ == "__main__":
    from harness.engine.loop import Preempted

    torch.set_num_threads(1)
    work, out = Path(sys.argv[1]), Path(sys.argv[2])
    stop = int(sys.argv[3]) if len(sys.argv) > 3 else None
    try:
        run(work, out, ToyBYOL(stop_at=stop, ready=work / "ready" if stop is not None else None))
    except Preempted:
        sys.exit(130)
    os.write(1, b"done\n")
