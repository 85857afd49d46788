"""What tests/ and benchmarks/ share: how many pytest-xdist workers a run gets, and the
one-torch-thread fixture (``pytest.mark.usefixtures("one_torch_thread")``)."""

from __future__ import annotations

import os

import pytest

#: pyproject's default marker selection: the fast tests
DEFAULT_SELECTION = "not slow and not benchmark and not slurm"

if os.environ.get("PYTEST_XDIST_WORKER"):  # one of several workers sharing the CPUs (below)
    # one torch thread per worker and per CLI subprocess it starts (tests that compare thread
    # counts set their own): two-thread runs on a shared core spin-wait, 45% more CPU measured
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_xdist_auto_num_workers(config) -> int:
    """Workers for ``-n auto`` (pyproject's addopts): for the default selection one per CPU this
    process may use, at most 8 (each holds torch; 2 cores: 6.7 min instead of 13); 0 (one
    process) for any other selection: the slow learning checks and benchmarks time and compare
    runs, the SLURM tests wait on the scheduler."""
    if config.option.markexpr != DEFAULT_SELECTION:
        return 0
    return max(1, min(8, len(os.sched_getaffinity(0))))


@pytest.fixture
def one_torch_thread():
    """Torch's intra-op threads set to 1 for the test, as in a DataLoader worker: on tiny
    tensors more threads only add synchronisation, which stalls badly on a busy machine (used
    by tests and benchmarks: ``pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
