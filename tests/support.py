"""What tests (and benchmarks, which put tests/ on ``sys.path``) share besides fixtures: the
repository root, a tiny spec, writing a spec, running the CLI, spawning distributed ranks.

A plain module rather than ``conftest.py``: two ``conftest`` modules exist (the repository
root's and tests/'), and ``from conftest import ...`` finds whichever pytest imported last.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


TINY_SPEC = """
name: tiny
dataset:
  name: synthetic
  image_size: 32
  images_per_fold: 8
  unlabeled_images: 0
methods: [scratch]
protocols: [frozen, full]
folds: [fold1]
finetune:
  epochs: 2
  batch_size: 8
  eval_batch_size: 16
"""


def write_spec(tmp_path: Path, text: str = TINY_SPEC, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=kw.pop("cwd", REPO), **kw)


def _rank_then_leave(rank: int, worker, *args) -> None:
    """``worker(rank, *args)``, then the process ends without torch's teardown, which can abort
    a finished rank under load (:func:`harness.engine.distributed.leave`); an exception
    propagates as before."""
    from harness.engine.distributed import leave

    worker(rank, *args)
    leave(0)


def spawn_ranks(worker, args: tuple, nprocs: int, timeout_s: float = 600) -> None:
    """Run ``worker(rank, *args)`` in ``nprocs`` spawned processes and wait for them; a worker's
    exception fails the test with its traceback. ``timeout_s`` is a deadlock guard, not a speed
    limit: each spawned process imports torch before the ranks meet (a minute under load)."""
    import time

    import torch.multiprocessing as mp

    ctx = mp.spawn(_rank_then_leave, args=(worker, *args), nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1):  # raises ProcessRaisedException if a worker failed
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail(f"distributed workers did not finish within {timeout_s} s")
