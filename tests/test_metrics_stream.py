"""PQ on PanNuke-like sparse ids, and scoring predictions while they are made
(:mod:`harness.metrics.stream`): the values never depend on id layout, chunking or workers."""

from __future__ import annotations

import numpy as np
import pytest

from harness.data.base import LabeledArrays
from harness.metrics import binarize_channels, panoptic_quality, per_image_pq
from harness.metrics.stream import ChunkScorer, auto_workers
from harness.plugins import get_registry
from test_metrics_pq import random_pair


def sparse_ids(n_ids: int, top: int, seed: int) -> np.ndarray:
    """An order-preserving lookup table 0..n_ids -> sparse ids up to ``top`` (0 stays 0)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([[0], np.sort(rng.choice(np.arange(1, top), n_ids, replace=False))])


@pytest.mark.parametrize("seed", range(8))
def test_sparse_ids_score_bit_identically(seed: int) -> None:
    # PanNuke's ids run to ~4,000 with a few dozen nuclei; relabelling keeps id order, so the
    # matched IoUs are summed in the same order and the scores are equal to the last bit
    true, pred = random_pair(seed, size=128, n=30)
    expected = panoptic_quality(true, pred)
    lut_t = sparse_ids(int(true.max()), 4000, seed)
    lut_p = sparse_ids(int(pred.max()), 4000, seed + 100)
    assert panoptic_quality(lut_t[true], pred) == expected
    assert panoptic_quality(lut_t[true], lut_p[pred]) == expected
    assert panoptic_quality(lut_t[true].astype(np.float64), lut_p[pred]) == expected  # PanNuke dtype
    shifted = np.where(true > 0, true + (1 << 30), 0)  # beyond the dense-count limit: ranked
    assert panoptic_quality(shifted, lut_p[pred]) == expected


def test_per_image_pq_of_channels_last_maps_is_per_channel_pq() -> None:
    pairs = [random_pair(s, size=48, n=10) for s in range(6)]
    lut = sparse_ids(60, 4000, 1)
    true = np.stack([np.stack([lut[pairs[(i + c) % 6][0]] for c in range(3)], -1) for i in range(2)])
    pred = np.stack([np.stack([pairs[(i + c) % 6][1] for c in range(3)], -1) for i in range(2)])
    bpq, class_pq = per_image_pq(true, pred)
    for i in range(2):
        for c in range(3):
            assert class_pq[i, c] == panoptic_quality(true[i, :, :, c], pred[i, :, :, c]).pq
        assert bpq[i] == panoptic_quality(binarize_channels(true[i]), binarize_channels(pred[i])).pq


def test_binarize_later_channel_wins_and_ids_stay_unique() -> None:
    ch = np.zeros((4, 4, 3), np.int32)
    ch[0:2, 0:2, 0] = 5
    ch[1:3, 1:3, 1] = 2  # overlaps channel 0 at (1, 1)
    ch[3, 3, 2] = 7
    out = binarize_channels(ch)
    assert out[0, 0] == 5 and out[1, 1] == 5 + 2 and out[2, 2] == 7 and out[3, 3] == 5 + 2 + 7
    assert binarize_channels(ch.astype(np.float64)).tolist() == out.tolist()


def _fold(n: int, size: int = 32, seed: int = 0) -> tuple[LabeledArrays, np.ndarray]:
    """A labelled set of ``n`` images (3 classes) and noisy argmax predictions for it."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((n, size, size), np.int32)
    cls = np.zeros((n, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        for k in range(6):
            cy, cx, r = rng.integers(4, size - 4), rng.integers(4, size - 4), rng.integers(2, 5)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            inst[i][disc] = 97 * i + 13 * k + 1  # sparse, as PanNuke's
            cls[i][disc] = rng.integers(1, 4)
    pred = np.where(rng.random(cls.shape) < 0.1, rng.integers(0, 4, cls.shape), cls).astype(np.uint8)
    arrays = LabeledArrays(images=np.zeros((n, size, size, 3), np.uint8), instances=inst,
                           classes=cls, ids=[f"im{i}" for i in range(n)],
                           tissues=[["a", "b"][i % 2] for i in range(n)], groups=["f1"] * n)
    return arrays, pred


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_pq_equals_scoring_at_the_end(workers: int) -> None:
    arrays, pred = _fold(150)
    rows = np.arange(149, -1, -1)[:140]  # a test fold in any row order
    family = get_registry().metric_family("pq")
    expected = family.compute(pred[rows], arrays, rows, ["x", "y", "z"])
    scorer = family.scorer(arrays, rows, ["x", "y", "z"], workers)
    for start in range(0, len(rows), 32):  # the evaluate stage's batches
        scorer.add(pred[rows[start:start + 32]])
    assert scorer.finish() == expected


def test_default_scorer_buffers_for_compute() -> None:
    arrays, pred = _fold(20)
    rows = np.arange(20)
    family = get_registry().metric_family("dice")
    scorer = family.scorer(arrays, rows, ["x", "y", "z"], 2)
    for start in range(0, 20, 8):
        scorer.add(pred[start:start + 8])
    assert scorer.finish() == family.compute(pred, arrays, rows, ["x", "y", "z"])


def _fails(x: int) -> int:
    if x == 3:
        raise ValueError("chunk 3 is bad")
    return x * x


def test_chunk_scorer_keeps_order_and_reraises() -> None:
    scorer = ChunkScorer(_fails, workers=2)
    for x in (5, 1, 4):
        scorer.submit(x)
    assert scorer.results() == [25, 1, 16]
    scorer = ChunkScorer(_fails, workers=2)
    for x in range(6):
        scorer.submit(x)
    with pytest.raises(ValueError, match="chunk 3"):
        scorer.results()


def test_auto_workers_only_for_sets_worth_a_process() -> None:
    assert auto_workers(128, 64) == 0
    assert 1 <= auto_workers(2700, 64) <= 8


def test_evaluation_equals_scoring_the_channel_arrays() -> None:
    # the evaluation builds each image's planes itself; it must equal aggregating the documented
    # (N, H, W, K) channel conversions
    from harness.metrics import (aggregate_pq, evaluate_segmentation, instances_to_channels,
                                 semantic_to_binary_channels, semantic_to_instances)
    arrays, pred = _fold(70, seed=3)
    names = ["x", "y", "z"]
    got = evaluate_segmentation(pred, arrays.classes, arrays.instances, arrays.tissues, names)
    assert got["instance"] == aggregate_pq(
        instances_to_channels(arrays.instances, arrays.classes, 3), semantic_to_instances(pred, 3),
        arrays.tissues, names)
    assert got["thesis"] == aggregate_pq(
        semantic_to_binary_channels(arrays.classes, 3), semantic_to_binary_channels(pred, 3),
        arrays.tissues, names)
    with pytest.raises(ValueError, match="0..3"):
        evaluate_segmentation(pred + 1, arrays.classes, arrays.instances, arrays.tissues, names)
