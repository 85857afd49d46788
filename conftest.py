"""Fixtures shared by tests/ and benchmarks/."""

from __future__ import annotations

import pytest


@pytest.fixture
def one_torch_thread():
    """Torch's intra-op threads set to 1 for the test, as in a DataLoader worker: on tiny
    tensors more threads only add synchronisation, which stalls badly on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
