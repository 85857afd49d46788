"""Shared fixtures: an isolated artifact store and torch hub dir per test, finished runs.
Helpers that are not fixtures live in ``tests/support.py``."""

from __future__ import annotations

from pathlib import Path

import pytest


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
