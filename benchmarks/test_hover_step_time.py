"""Training step time of the ``hover`` head against ``semantic`` (shared decoder: only the last
convolution's width and the loss differ): ResNet-18 U-Net, batch 8 of 64x64 images, forward +
loss + backward + Adam step, the two interleaved in one process, best of several rounds.

Run: ``PYTHONPATH=. .venv/bin/python -m pytest benchmarks/test_hover_step_time.py -m benchmark -s``
"""

from __future__ import annotations

import time

import pytest
import torch

from harness.engine.model import build_unet
from harness.heads import out_channels
from harness.heads.hover_loss import hover_loss

ROUNDS, STEPS = 5, 4


@pytest.mark.benchmark
def test_hover_step_time():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 64, 64)
    classes = torch.randint(0, 6, (8, 64, 64))
    hv = torch.rand(8, 2, 64, 64) * 2 - 1
    nets = {h: build_unet("resnet18", out_channels(h, 6)) for h in ("semantic", "hover")}
    opts = {h: torch.optim.Adam(n.parameters(), 1e-3) for h, n in nets.items()}
    losses = {"semantic": lambda y: torch.nn.functional.cross_entropy(y, classes),
              "hover": lambda y: hover_loss(y, classes, hv)[0]}
    best = {h: float("inf") for h in nets}
    for _ in range(ROUNDS):
        for h, net in nets.items():
            start = time.perf_counter()
            for _ in range(STEPS):
                loss = losses[h](net(x))
                opts[h].zero_grad()
                loss.backward()
                opts[h].step()
            best[h] = min(best[h], (time.perf_counter() - start) / STEPS)
    print(f"\nstep: semantic {best['semantic'] * 1e3:.1f} ms, hover {best['hover'] * 1e3:.1f} ms "
          f"(x{best['hover'] / best['semantic']:.2f}), threads {torch.get_num_threads()}")
    assert best["hover"] < 2 * best["semantic"]
