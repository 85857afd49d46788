"""Shared fixtures: an isolated artifact store and torch hub dir per test, tiny specs."""

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


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "store"
    monkeypatch.setenv("HARNESS_STORE", str(path))
    return path


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME so that nothing from the user's cache leaks into a test."""
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(home))
    import torch

    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    return home


@pytest.fixture
def imagenet_weights(torch_home) -> Path:
    """A generated (random) torchvision ResNet-18 state dict where torchvision keeps ImageNet
    weights; nothing touches the network."""
    import torch
    import torchvision

    torch.manual_seed(123)
    path = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def finished_runs(tmp_path_factory):
    """Tiny finished runs shared by the session's tests, each run when a test first asks for it
    (tests/finished_runs.py): ``finished_runs.get("demo")``."""
    from finished_runs import FinishedRuns

    return FinishedRuns(tmp_path_factory.mktemp("finished_runs"))


@pytest.fixture(scope="session")
def tiny_run(finished_runs):
    """TINY_SPEC with ``--set finetune.epochs=1``, run once in this process: a frozen and a full
    cell (a session fixture, so the run is done before a test's own fixtures change anything)."""
    return finished_runs.get("tiny")


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
