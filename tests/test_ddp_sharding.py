"""Without processes: how a global batch is split over DDP ranks, and the one-line errors."""

from __future__ import annotations

import pytest
import torch

from harness.engine.loader import _check_split, _SkippingBatches
from harness.errors import SpecError


def _batches(n: int, size: int, drop_last: bool, rank: int, world: int) -> list[list[int]]:
    inner = torch.utils.data.BatchSampler(range(n), size, drop_last)
    return list(_SkippingBatches(inner, rank, world))


def test_ranks_take_contiguous_slices_of_the_same_global_batches():
    whole = _batches(10, 4, False, 0, 1)
    parts = [_batches(10, 4, False, r, 2) for r in range(2)]
    assert [a + b for a, b in zip(*parts)] == whole  # rank order = the global batch
    assert [len(b) for b in parts[0]] == [2, 2, 1] and [len(b) for b in parts[1]] == [2, 2, 1]
    three = [_batches(7, 7, False, r, 3) for r in range(3)]
    assert [b[0] for b in three] == [[0, 1, 2], [3, 4], [5, 6]]
    sampler = _SkippingBatches(torch.utils.data.BatchSampler(range(7), 7, False), 0, 3)
    shares = [_SkippingBatches(sampler.inner, r, 3).share(7) for r in range(3)]
    assert shares == pytest.approx([9 / 7, 6 / 7, 6 / 7]) and sum(shares) == pytest.approx(3)


def test_a_batch_that_does_not_split_is_a_one_line_spec_error():
    with pytest.raises(SpecError, match="batch_size 10 .* does not split over 4 processes"):
        _check_split(100, 10, True, 4)
    with pytest.raises(SpecError, match="last batch has 1 image"):
        _check_split(9, 4, False, 2)
    _check_split(9, 4, True, 2)  # the partial batch is dropped
