"""Hand-computed and reference-checked cases for :func:`harness.metrics.panoptic_quality`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.metrics import PQResult, panoptic_quality

EPS = 1e-6  # get_fast_pq's SQ denominator is TP + 1e-6


def reference_pq(true: np.ndarray, pred: np.ndarray, thr: float = 0.5) -> PQResult:
    """Straightforward per-pair implementation of the same definition (test oracle)."""
    t_ids = [i for i in np.unique(true) if i != 0]
    p_ids = [i for i in np.unique(pred) if i != 0]
    matched_iou, matched_pred = [], []
    for a in t_ids:
        tm = true == a
        for b in np.unique(pred[tm]):
            if b == 0:
                continue
            pm = pred == b
            iou = np.logical_and(tm, pm).sum() / np.logical_or(tm, pm).sum()
            if iou > thr:
                matched_iou.append(iou)
                matched_pred.append(b)
    assert len(set(matched_pred)) == len(matched_pred), "matches must be unique"
    tp = len(matched_iou)
    fp, fn = len(p_ids) - tp, len(t_ids) - tp
    if tp + fp + fn == 0:
        return PQResult(math.nan, math.nan, math.nan, 0, 0, 0)
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(np.sum(matched_iou)) / (tp + EPS)
    return PQResult(dq, sq, dq * sq, tp, fp, fn)


def random_pair(seed: int, size: int = 64, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random discs (GT) and a prediction of shifted, resized, missing and extra discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    true = np.zeros((size, size), np.int64)
    pred = np.zeros((size, size), np.int64)
    for k in range(n):
        cy, cx = rng.integers(0, size, size=2)
        r = rng.integers(2, 8)
        true[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k + 1
        if rng.random() < 0.15:
            continue  # missed nucleus
        dy, dx = rng.integers(-3, 4, size=2)
        pr = max(1, r + rng.integers(-2, 3))
        pred[(yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 <= pr * pr] = 100 + k
    for k in range(rng.integers(0, 4)):  # spurious detections
        cy, cx = rng.integers(0, size, size=2)
        pred[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = 500 + k
    return true, pred


def assert_same(result: PQResult, expected: PQResult, atol: float = 1e-12) -> None:
    assert (result.tp, result.fp, result.fn) == (expected.tp, expected.fp, expected.fn)
    np.testing.assert_allclose(result[:3], expected[:3], rtol=0, atol=atol)


def square_map(shape=(8, 8), **regions) -> np.ndarray:
    """Map from ``id_N=(y0, y1, x0, x1)`` rectangles, painted in order."""
    out = np.zeros(shape, np.int32)
    for name, (y0, y1, x0, x1) in regions.items():
        out[y0:y1, x0:x1] = int(name.split("_")[1])
    return out


# --- hand-computed cases ------------------------------------------------------------------------

def test_perfect_prediction_with_other_ids() -> None:
    true = square_map(id_1=(0, 3, 0, 3), id_2=(4, 8, 0, 2), id_3=(5, 8, 4, 8))
    pred = square_map(id_7=(0, 3, 0, 3), id_3=(4, 8, 0, 2), id_9=(5, 8, 4, 8))
    r = panoptic_quality(true, pred)
    assert (r.tp, r.fp, r.fn) == (3, 0, 0)
    assert r.dq == 1.0
    assert r.sq == pytest.approx(1.0, abs=1e-6) and r.pq == pytest.approx(1.0, abs=1e-6)
    assert r.sq == pytest.approx(3 / (3 + EPS), abs=1e-15)
    assert isinstance(r.pq, float) and isinstance(r.tp, int)


def test_disjoint_is_zero() -> None:
    r = panoptic_quality(square_map(id_1=(0, 3, 0, 3)), square_map(id_1=(5, 8, 5, 8)))
    assert r == PQResult(0.0, 0.0, 0.0, 0, 1, 1)


def test_split_nucleus_into_halves_is_not_matched() -> None:
    # a 4x4 nucleus predicted as two 4x2 halves: each IoU = 8/16 = 0.5, not > 0.5
    true = square_map(id_1=(0, 4, 0, 4))
    pred = square_map(id_1=(0, 4, 0, 2), id_2=(0, 4, 2, 4))
    assert panoptic_quality(true, pred) == PQResult(0.0, 0.0, 0.0, 0, 2, 1)


def test_split_nucleus_with_a_dominant_part() -> None:
    # 12/16 = 0.75 for the big part (matched), the 4-pixel sliver is a false positive
    true = square_map(id_1=(0, 4, 0, 4))
    pred = square_map(id_1=(0, 4, 0, 3), id_2=(0, 4, 3, 4))
    r = panoptic_quality(true, pred)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)
    assert r.dq == pytest.approx(2 / 3, abs=1e-15)
    assert r.sq == pytest.approx(0.75 / (1 + EPS), abs=1e-15)
    assert r.pq == pytest.approx(0.5 / (1 + EPS), abs=1e-15)


def test_merged_pair_of_equal_nuclei() -> None:
    # two 4x4 nuclei predicted as one 4x8 segment: each IoU = 16/32 = 0.5 -> no match
    true = square_map(id_1=(0, 4, 0, 4), id_2=(0, 4, 4, 8))
    pred = square_map(id_5=(0, 4, 0, 8))
    assert panoptic_quality(true, pred) == PQResult(0.0, 0.0, 0.0, 0, 1, 2)


def test_merged_pair_with_a_dominant_nucleus() -> None:
    # 24-px and 8-px nuclei merged into one 32-px segment: IoU 24/32 = 0.75 with the big one
    true = square_map(id_1=(0, 4, 0, 6), id_2=(0, 4, 6, 8))
    pred = square_map(id_1=(0, 4, 0, 8))
    r = panoptic_quality(true, pred)
    assert (r.tp, r.fp, r.fn) == (1, 0, 1)
    assert r.pq == pytest.approx((2 / 3) * 0.75 / (1 + EPS), abs=1e-15)


def test_empty_truth_with_predictions() -> None:
    r = panoptic_quality(np.zeros((8, 8), int), square_map(id_1=(0, 2, 0, 2), id_4=(5, 7, 5, 7)))
    assert r == PQResult(0.0, 0.0, 0.0, 0, 2, 0)


def test_empty_prediction_with_truth() -> None:
    r = panoptic_quality(square_map(id_1=(0, 2, 0, 2), id_4=(5, 7, 5, 7)), np.zeros((8, 8), int))
    assert r == PQResult(0.0, 0.0, 0.0, 0, 0, 2)


def test_all_empty_is_nan() -> None:
    r = panoptic_quality(np.zeros((8, 8), np.int32), np.zeros((8, 8), np.uint8))
    assert math.isnan(r.dq) and math.isnan(r.sq) and math.isnan(r.pq)
    assert (r.tp, r.fp, r.fn) == (0, 0, 0)


@pytest.mark.parametrize("pred_ids", [(17, 230, 3512), (10**9 + 7, 2, 10**12)])
def test_non_contiguous_and_huge_ids(pred_ids) -> None:
    true = square_map(id_1=(0, 4, 0, 4), id_2=(0, 4, 4, 8), id_3=(5, 8, 0, 8))
    pred = square_map(id_1=(0, 4, 0, 3), id_2=(0, 2, 4, 8), id_3=(5, 8, 1, 8))
    expected = panoptic_quality(true, pred)  # IoUs 0.75, 0.5 (unmatched), 21/24
    assert (expected.tp, expected.fp, expected.fn) == (2, 1, 1)
    assert expected.pq == pytest.approx(2 / 3 * (0.75 + 21 / 24) / (2 + EPS), abs=1e-15)
    lut_true = np.array([0, 3512, 17, 230], np.int64)
    lut_pred = np.array((0,) + pred_ids, np.int64)
    assert panoptic_quality(lut_true[true], lut_pred[pred]) == expected


def test_background_need_not_occur() -> None:
    # a prediction covering the whole image is one segment (the reference code crashes here)
    true = square_map(id_1=(0, 6, 0, 8))  # 48 of 64 pixels
    r = panoptic_quality(true, np.full((8, 8), 4))
    assert (r.tp, r.fp, r.fn) == (1, 0, 0)
    assert r.pq == pytest.approx(0.75 / (1 + EPS), abs=1e-15)
    r = panoptic_quality(np.ones((8, 8), int), np.full((8, 8), 2))
    assert r.tp == 1 and r.pq == pytest.approx(1.0, abs=1e-6)


def test_threshold_is_strict() -> None:
    true = square_map(id_1=(0, 4, 0, 4))
    half = square_map(id_1=(0, 4, 0, 2))  # IoU exactly 0.5
    three_quarters = square_map(id_1=(0, 4, 0, 3))  # IoU exactly 0.75
    assert panoptic_quality(true, half).tp == 0
    assert panoptic_quality(true, three_quarters, iou_threshold=0.75).tp == 0
    assert panoptic_quality(true, three_quarters, iou_threshold=0.7).tp == 1
    assert panoptic_quality(true, true, iou_threshold=1.0).tp == 0  # IoU 1 is not > 1


@pytest.mark.parametrize("thr", [0.49, 0.0, float("nan")])
def test_thresholds_below_half_are_rejected(thr) -> None:
    with pytest.raises(ValueError, match="iou_threshold"):
        panoptic_quality(np.zeros((4, 4), int), np.zeros((4, 4), int), iou_threshold=thr)


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="shape"):
        panoptic_quality(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="2-D"):
        panoptic_quality(np.zeros((1, 4, 4), int), np.zeros((1, 4, 4), int))
    with pytest.raises(ValueError, match="negative"):
        panoptic_quality(-np.ones((4, 4), int), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="non-integer"):
        panoptic_quality(np.full((4, 4), 0.5), np.zeros((4, 4), int))


def test_integer_valued_floats_and_bools_are_accepted() -> None:
    true, pred = random_pair(5)
    expected = panoptic_quality(true, pred)
    assert panoptic_quality(true.astype(np.float64), pred.astype(np.float64)) == expected
    assert panoptic_quality(true > 0, pred > 0) == panoptic_quality((true > 0) * 1, (pred > 0) * 1)


# --- agreement with the straightforward oracle ------------------------------------------------

@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("thr", [0.5, 0.65])
def test_matches_reference_on_random_discs(seed: int, thr: float) -> None:
    true, pred = random_pair(seed)
    assert_same(panoptic_quality(true, pred, thr), reference_pq(true, pred, thr))


def test_many_instances_sparse_path_matches_reference() -> None:
    # 1,024 instances per side: too many pairs for the dense joint histogram; shifted by one
    # pixel, an intact 4x4 instance has IoU 12/20 = 0.6 with its prediction
    rng = np.random.default_rng(0)
    true = np.kron(np.arange(1, 1025).reshape(32, 32), np.ones((4, 4), int))
    pred = np.roll(true, 1, axis=1) * (rng.random(true.shape) > 0.05)
    pred[rng.random(true.shape) < 0.02] = 0
    result = panoptic_quality(true, pred)
    assert result.tp > 0 and result.fp > 0
    assert_same(result, reference_pq(true, pred))
