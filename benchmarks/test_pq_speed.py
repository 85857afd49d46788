"""Speed of :func:`harness.metrics.panoptic_quality` against a per-instance loop.

The baseline is PanNuke-metrics' pipeline for one channel: ``remap_label`` followed by
``get_fast_pq`` -- one full-image mask per instance and one IoU per overlapping pair. Both run on
the same 256x256 maps with 40 nuclei (seeded random discs; the prediction is the GT with shifted,
split, missing and spurious nuclei), must agree exactly, and the vectorised version must be at
least 10x faster.

Run: ``PYTHONPATH=. .venv/bin/python -m pytest benchmarks/test_pq_speed.py -m benchmark``
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from harness.metrics import panoptic_quality

SIZE = 256
N_NUCLEI = 40
TARGET_SPEEDUP = 10.0
ROUNDS = 200


# --- the baseline: PanNuke-metrics remap_label + get_fast_pq (match_iou >= 0.5 branch) --------

def remap_label_loop(pred: np.ndarray) -> np.ndarray:
    """``pnm:utils.py remap_label`` (by_size=False): ids -> 1..n with one full-image pass each."""
    pred_id = list(np.unique(pred))
    pred_id.remove(0)
    new_pred = np.zeros(pred.shape, np.int32)
    for idx, inst_id in enumerate(pred_id):
        new_pred[pred == inst_id] = idx + 1
    return new_pred


def get_fast_pq_loop(true: np.ndarray, pred: np.ndarray, match_iou: float = 0.5) -> tuple:
    """``pnm:utils.py get_fast_pq`` for match_iou >= 0.5; returns (dq, sq, pq, tp, fp, fn)."""
    true = remap_label_loop(np.copy(true))
    pred = remap_label_loop(np.copy(pred))
    true_id_list = list(np.unique(true))
    pred_id_list = list(np.unique(pred))
    true_masks = [None] + [np.array(true == t, np.uint8) for t in true_id_list[1:]]
    pred_masks = [None] + [np.array(pred == p, np.uint8) for p in pred_id_list[1:]]
    pairwise_iou = np.zeros([len(true_id_list) - 1, len(pred_id_list) - 1], dtype=np.float64)
    for true_id in true_id_list[1:]:
        t_mask = true_masks[true_id]
        for pred_id in np.unique(pred[t_mask > 0]):
            if pred_id == 0:
                continue
            p_mask = pred_masks[pred_id]
            total = (t_mask + p_mask).sum()
            inter = (t_mask * p_mask).sum()
            pairwise_iou[true_id - 1, pred_id - 1] = inter / (total - inter)
    pairwise_iou[pairwise_iou <= match_iou] = 0.0
    paired_true, paired_pred = np.nonzero(pairwise_iou)
    paired_iou = pairwise_iou[paired_true, paired_pred]
    tp = len(paired_true)
    fp = len(pred_id_list) - 1 - tp
    fn = len(true_id_list) - 1 - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = paired_iou.sum() / (tp + 1.0e-6)
    return dq, sq, dq * sq, tp, fp, fn


# --- the maps -----------------------------------------------------------------------------------

def make_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """GT with ``N_NUCLEI`` discs and a perturbed prediction (shifted/split/missing/extra)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    true = np.zeros((SIZE, SIZE), np.int32)
    discs = []
    for k in range(N_NUCLEI):
        cy, cx = rng.integers(10, SIZE - 10, size=2)
        r = int(rng.integers(5, 11))
        true[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k + 1
        discs.append((cy, cx, r))
    pred = np.zeros_like(true)
    next_id = 1
    for k, (cy, cx, r) in enumerate(discs):
        mask = true == k + 1
        if not mask.any():
            continue
        action = rng.choice(["keep", "shift", "far", "split", "missing"],
                            p=[0.5, 0.2, 0.1, 0.1, 0.1])
        if action == "missing":
            continue
        if action in ("shift", "far"):
            d = rng.integers(1, 3, size=2) if action == "shift" else rng.integers(4, 8, size=2)
            mask = np.roll(mask, tuple(int(v) for v in d), axis=(0, 1))
        if action == "split":
            pred[mask & (xx < cx)] = next_id
            pred[mask & (xx >= cx)] = next_id + 1
            next_id += 2
        else:
            pred[mask] = next_id
            next_id += 1
    for _ in range(4):  # spurious detections
        cy, cx = rng.integers(10, SIZE - 10, size=2)
        pred[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = next_id
        next_id += 1
    return true, pred


def _best_of(fn, args, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.benchmark(group="panoptic_quality_256px_40_nuclei")
def test_pq_loop_baseline(benchmark) -> None:
    true, pred = make_pair()
    benchmark.pedantic(get_fast_pq_loop, args=(true, pred), rounds=ROUNDS // 4, iterations=1,
                       warmup_rounds=2)


@pytest.mark.benchmark(group="panoptic_quality_256px_40_nuclei")
def test_pq_vectorised_speedup(benchmark) -> None:
    pairs = [make_pair(seed) for seed in range(5)]
    for true, pred in pairs:  # identical values on several maps first
        fast = panoptic_quality(true, pred)
        slow = get_fast_pq_loop(true, pred)
        assert fast.tp == slow[3] and fast.fp == slow[4] and fast.fn == slow[5]
        assert fast.tp > 0 and fast.fp > 0 and fast.fn > 0  # the maps exercise every case
        np.testing.assert_allclose(fast[:3], slow[:3], rtol=0, atol=1e-12)

    true, pred = pairs[0]
    benchmark.pedantic(panoptic_quality, args=(true, pred), rounds=ROUNDS, iterations=1,
                       warmup_rounds=5)
    fast_s = benchmark.stats.stats.min
    loop_s = _best_of(get_fast_pq_loop, (true, pred), ROUNDS // 4)
    speedup = loop_s / fast_s
    benchmark.extra_info["loop_best_s"] = loop_s
    benchmark.extra_info["speedup_vs_loop"] = speedup
    print(f"\npanoptic_quality: {fast_s * 1e6:.0f} us, per-instance loop: {loop_s * 1e6:.0f} us, "
          f"speed-up {speedup:.1f}x")
    assert speedup >= TARGET_SPEEDUP
