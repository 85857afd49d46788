"""Dataset aggregation (PanNuke run.py), class/instance conversions and both PQ variants."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import harness.metrics.evaluate as evaluate_module
from harness.metrics import (CONNECTIVITY, aggregate_pq, binarize_channels, evaluate_segmentation,
                             instances_to_channels, panoptic_quality, semantic_to_binary_channels,
                             semantic_to_instances)

EPS = 1e-6
ONE = 1 / (1 + EPS)  # SQ of one perfect match


def perfect(n: int) -> float:
    """PQ of n perfect matches: SQ = n / (n + 1e-6)."""
    return n / (n + EPS)


def rect(shape, y0, y1, x0, x1, value=1) -> np.ndarray:
    out = np.zeros(shape, np.int32)
    out[y0:y1, x0:x1] = value
    return out


def channels(*maps: np.ndarray) -> np.ndarray:
    """Stack per-class maps (H, W) into (H, W, C)."""
    return np.stack(maps, axis=-1)


# --- binarize ----------------------------------------------------------------------------------

def test_binarize_gives_unique_ids_and_later_channels_win() -> None:
    shape = (6, 6)
    ch0 = rect(shape, 0, 3, 0, 3, 1) + rect(shape, 4, 6, 4, 6, 2)
    ch1 = rect(shape, 2, 4, 2, 4, 1)  # overlaps channel 0's nucleus 1 at one pixel
    ch2 = rect(shape, 4, 6, 4, 6, 9)  # covers channel 0's nucleus 2 entirely
    out = binarize_channels(channels(ch0, ch1, ch2))
    ids = {int(v) for v in np.unique(out)} - {0}
    assert len(ids) == 3  # nucleus 2 of channel 0 vanished under channel 2
    assert out[2, 2] == out[3, 3] != out[0, 0]  # overlap pixel went to channel 1
    assert out[4, 4] != out[0, 0] and out[4, 4] != out[3, 3]
    assert (out > 0).sum() == 9 + 4 + 3  # union of all foreground


def test_bpq_is_class_agnostic_and_mpq_is_per_class() -> None:
    shape = (8, 8)
    a, b = rect(shape, 0, 3, 0, 3), rect(shape, 5, 8, 5, 8)
    true = channels(a, b)[None]  # nucleus a is class 1, nucleus b class 2
    pred = channels(a + 2 * b, np.zeros(shape, np.int32))[None]  # both predicted as class 1
    res = aggregate_pq(true, pred, ["Breast"])
    assert res["bpq"] == pytest.approx(perfect(2), abs=1e-12)
    # class 1: TP 1, FP 1 -> 2/3; class 2: missed -> 0
    assert res["per_class"] == pytest.approx({"class1": 2 / 3 * ONE, "class2": 0.0}, abs=1e-12)
    assert res["mpq"] == pytest.approx(ONE / 3, abs=1e-12)


# --- aggregation -------------------------------------------------------------------------------

def three_image_example() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Two classes; nucleus A (class 1) and B (class 2).

    img0 Breast: GT A,   pred A      -> class1 = 1, class2 = NaN, mPQ 1,   bPQ 1
    img1 Breast: GT A+B, pred B      -> class1 = 0, class2 = 1,   mPQ 0.5, bPQ 2/3
    img2 Colon:  GT B,   pred B as class 1 + nothing in class 2
                                      -> class1 = NaN (not penalised), class2 = 0, mPQ 0, bPQ 1
    """
    shape = (8, 8)
    a, b = rect(shape, 0, 3, 0, 3), rect(shape, 4, 8, 4, 8)
    z = np.zeros(shape, np.int32)
    true = np.stack([channels(a, z), channels(a, b), channels(z, b)])
    pred = np.stack([channels(a, z), channels(z, b), channels(b, z)])
    return true, pred, ["Breast", "Breast", "Colon"]


def test_per_tissue_averaging_and_nan_skipping() -> None:
    true, pred, tissues = three_image_example()
    res = aggregate_pq(true, pred, tissues, class_names=["neo", "inflam"])
    assert res["per_image"]["mpq"] == pytest.approx([ONE, 0.5 * ONE, 0.0], abs=1e-12)
    assert res["per_image"]["bpq"] == pytest.approx([ONE, 2 / 3 * ONE, ONE], abs=1e-12)
    assert res["per_tissue"]["Breast"] == pytest.approx(
        {"mpq": 0.75 * ONE, "bpq": 5 / 6 * ONE, "n": 2}, abs=1e-12)
    assert res["per_tissue"]["Colon"] == pytest.approx({"mpq": 0.0, "bpq": ONE, "n": 1}, abs=1e-12)
    # reported = mean over tissues, not over images (image mean would be 0.5)
    assert res["mpq"] == pytest.approx(0.375 * ONE, abs=1e-12)
    assert res["bpq"] == pytest.approx(11 / 12 * ONE, abs=1e-12)
    # per class = nanmean over all images, not grouped by tissue
    assert res["per_class"] == pytest.approx({"neo": 0.5 * ONE, "inflam": 0.5 * ONE}, abs=1e-12)
    assert res["n_images"] == 3
    json.dumps(res)  # JSON-friendly (NaN allowed by the encoder's default)


def test_chunked_aggregation_equals_the_whole_arrays() -> None:
    """aggregate_pq_chunks (the streaming entry point) gives aggregate_pq's dict, chunk sizes
    1 and 2 over the three images."""
    from harness.metrics import aggregate_pq_chunks

    true, pred, tissues = three_image_example()
    whole = aggregate_pq(true, pred, tissues, class_names=["neo", "inflam"])
    for size in (1, 2):
        chunks = ((true[i:i + size], pred[i:i + size]) for i in range(0, len(true), size))
        streamed = aggregate_pq_chunks(chunks, tissues, class_names=["neo", "inflam"])
        assert json.dumps(streamed, sort_keys=True) == json.dumps(whole, sort_keys=True)
    assert aggregate_pq_chunks(iter(()), [], class_names=["neo"])["n_images"] == 0


@pytest.mark.filterwarnings("error")  # no "Mean of empty slice" RuntimeWarnings
def test_images_without_gt_are_nan_and_skipped() -> None:
    true, pred, tissues = three_image_example()
    empty = np.zeros_like(true[:1])
    true = np.concatenate([true, empty])
    pred = np.concatenate([pred, rect((8, 8), 0, 4, 0, 4)[None, :, :, None].repeat(2, -1)])
    res = aggregate_pq(true, pred, tissues + ["Lung"])
    assert math.isnan(res["per_image"]["mpq"][3]) and math.isnan(res["per_image"]["bpq"][3])
    lung = res["per_tissue"]["Lung"]
    assert math.isnan(lung["mpq"]) and math.isnan(lung["bpq"]) and lung["n"] == 1
    assert res["mpq"] == pytest.approx(0.375 * ONE, abs=1e-12)  # Lung skipped


@pytest.mark.filterwarnings("error")
def test_class_absent_everywhere_is_nan() -> None:
    true, pred, tissues = three_image_example()
    z = np.zeros(true.shape[:3] + (1,), np.int32)
    res = aggregate_pq(np.concatenate([true, z], -1), np.concatenate([pred, z + 1], -1), tissues)
    assert math.isnan(res["per_class"]["class3"])
    assert res["mpq"] == pytest.approx(0.375 * ONE, abs=1e-12)  # predictions of it ignored


def test_gt_channel_covering_the_whole_image_is_nan() -> None:
    # faithful to pnm: len(np.unique(gt)) == 1 also for a whole-image segment
    full = np.ones((1, 4, 4, 1), np.int32)
    res = aggregate_pq(full, full, ["Breast"])
    assert math.isnan(res["mpq"]) and math.isnan(res["bpq"])


def test_aggregate_validation() -> None:
    true, pred, tissues = three_image_example()
    with pytest.raises(ValueError):
        aggregate_pq(true, pred[..., :1], tissues)
    with pytest.raises(ValueError):
        aggregate_pq(true, pred, tissues[:2])
    with pytest.raises(ValueError):
        aggregate_pq(true, pred, tissues, class_names=["only_one"])


# --- conversions -------------------------------------------------------------------------------

def test_connectivity_is_four() -> None:
    diag = np.array([[1, 0, 2], [0, 1, 0], [0, 0, 0]], np.uint8)
    inst = semantic_to_instances(diag, 2)
    assert CONNECTIVITY == 4
    assert inst.shape == (3, 3, 2) and inst.dtype == np.int32
    assert set(np.unique(inst[..., 0])) == {0, 1, 2}  # diagonal neighbours stay apart
    assert set(np.unique(inst[..., 1])) == {0, 1}
    assert set(np.unique(semantic_to_instances(diag, 2, connectivity=8)[..., 0])) == {0, 1}
    with pytest.raises(ValueError):
        semantic_to_instances(diag, 2, connectivity=6)


def test_semantic_to_instances_batch_and_validation() -> None:
    classes = np.zeros((2, 5, 5), np.uint8)
    classes[0, 0, :2] = 1
    classes[0, 3:, 3:] = 1
    classes[1, 2, 2] = 3
    inst = semantic_to_instances(classes, 3)
    assert inst.shape == (2, 5, 5, 3)
    assert inst[0, ..., 0].max() == 2 and inst[1, ..., 2].max() == 1
    assert inst[1, 2, 2, 2] == 1 and inst[1, ..., :2].max() == 0
    with pytest.raises(ValueError, match="0..2"):
        semantic_to_instances(classes, 2)


def test_instances_to_channels() -> None:
    inst = np.array([[5, 5, 0], [7, 7, 3512]], np.int32)
    cls = np.array([[1, 1, 0], [2, 2, 1]], np.uint8)
    out = instances_to_channels(inst, cls, 2)
    assert out.shape == (2, 3, 2) and out.dtype == np.int32
    np.testing.assert_array_equal(out[..., 0], [[5, 5, 0], [0, 0, 3512]])
    np.testing.assert_array_equal(out[..., 1], [[0, 0, 0], [7, 7, 0]])
    assert instances_to_channels(inst[None], cls[None], 2).shape == (1, 2, 3, 2)


def test_semantic_to_binary_channels() -> None:
    cls = np.array([[0, 1, 2], [2, 2, 0]], np.uint8)
    out = semantic_to_binary_channels(cls[None], 3)
    assert out.shape == (1, 2, 3, 3)
    np.testing.assert_array_equal(out[0, ..., 1], [[0, 0, 1], [1, 1, 0]])
    assert out[..., 2].max() == 0


# --- the two variants end to end ---------------------------------------------------------------

def three_nuclei() -> tuple[np.ndarray, np.ndarray]:
    classes = np.zeros((1, 16, 16), np.uint8)
    instances = np.zeros((1, 16, 16), np.int32)
    for k, (y, x) in enumerate([(1, 1), (1, 9), (9, 5)]):
        classes[0, y:y + 4, x:x + 4] = 1
        instances[0, y:y + 4, x:x + 4] = 10 * (k + 1)
    return classes, instances


def test_thesis_variant_treats_a_class_as_one_segment() -> None:
    classes, instances = three_nuclei()
    res = evaluate_segmentation(classes, classes, instances, ["Breast"], ["neo", "inflam"])
    assert res["connectivity"] == 4
    assert res["thesis"]["mpq"] == pytest.approx(ONE, abs=1e-12)
    assert res["instance"]["mpq"] == pytest.approx(perfect(3), abs=1e-12)  # 3 of 3 nuclei found
    assert math.isnan(res["thesis"]["per_class"]["inflam"])
    # README-literal "hybrid" (instance GT vs one segment per class): TP 0, FP 1, FN 3
    k = 2
    r = panoptic_quality(instances_to_channels(instances, classes, k)[0, ..., 0],
                         semantic_to_binary_channels(classes, k)[0, ..., 0])
    assert (r.tp, r.fp, r.fn, r.pq) == (0, 1, 3, 0.0)


def test_thesis_pq_is_thresholded_iou() -> None:
    # G = 86 px, P = 75 px inside G: IoU = 75/86 = 0.872093 -> PQ 0.8720922 (``pricon:segmentation/train.py`` L63-94)
    true = np.zeros((1, 12, 12), np.uint8)
    true[0, :8, :10] = 1
    true[0, 8, :6] = 1
    pred = true.copy()
    pred[0, :2, :5] = 0
    pred[0, 8, 5] = 0
    assert (true == 1).sum() == 86 and (pred == 1).sum() == 75
    res = evaluate_segmentation(pred, true, true.astype(np.int32), ["Breast"], ["neo"])
    assert res["thesis"]["mpq"] == pytest.approx(0.8720922, abs=1e-6)
    assert res["thesis"]["mpq"] == pytest.approx(75 / 86 / (1 + EPS), abs=1e-15)


def test_whole_image_prediction_does_not_crash() -> None:
    true = np.zeros((2, 8, 8), np.uint8)
    true[0, :6, :] = 1  # 48/64 of the image: IoU with a whole-image prediction 0.75
    true[1, :2, :2] = 1  # 4/64: not matched
    pred = np.ones_like(true)
    res = evaluate_segmentation(pred, true, true.astype(np.int32), ["A", "B"], ["neo"])
    assert res["thesis"]["per_image"]["mpq"] == pytest.approx([0.75 * ONE, 0.0], abs=1e-12)
    assert res["instance"]["per_image"]["mpq"] == pytest.approx([0.75 * ONE, 0.0], abs=1e-12)


def test_chunked_evaluation_equals_one_pass(monkeypatch) -> None:
    rng = np.random.default_rng(1)
    true = np.kron(rng.integers(0, 3, size=(5, 4, 4)), np.ones((1, 4, 4), int)).astype(np.uint8)
    inst = np.kron(rng.integers(1, 50, size=(5, 4, 4)), np.ones((1, 4, 4), int)) * (true > 0)
    pred = np.where(rng.random(true.shape) < 0.1, 0, true).astype(np.uint8)
    tissues = ["A", "B", "A", "C", "B"]
    monkeypatch.setattr(evaluate_module, "_CHUNK", 2)
    res = evaluate_segmentation(pred, true, inst, tissues, ["x", "y"])
    expected = aggregate_pq(instances_to_channels(inst, true, 2), semantic_to_instances(pred, 2),
                            tissues, ["x", "y"])
    np.testing.assert_equal(res["instance"], expected)
    np.testing.assert_equal(res["thesis"], aggregate_pq(semantic_to_binary_channels(true, 2),
                                                        semantic_to_binary_channels(pred, 2),
                                                        tissues, ["x", "y"]))


# --- agreement with a literal port of pnm:run.py ------------------------------------------------

def _loop_pq(true: np.ndarray, pred: np.ndarray) -> float:
    t_ids = [i for i in np.unique(true) if i != 0]
    p_ids = [i for i in np.unique(pred) if i != 0]
    ious = []
    for a in t_ids:
        for b in p_ids:
            inter = np.logical_and(true == a, pred == b).sum()
            iou = inter / np.logical_or(true == a, pred == b).sum()
            if iou > 0.5:
                ious.append(iou)
    tp = len(ious)
    dq = tp / (tp + 0.5 * (len(p_ids) - tp) + 0.5 * (len(t_ids) - tp))
    return dq * sum(ious) / (tp + EPS)


def _loop_binarize(x: np.ndarray) -> np.ndarray:
    out = np.zeros(x.shape[:2])
    count = 1
    for i in range(x.shape[2]):
        for j in sorted(set(np.unique(x[:, :, i]).tolist()) - {0}):
            mask = x[:, :, i] == j
            out *= 1 - mask
            out += count * mask
            count += 1
    return out.astype(np.int32)


def test_matches_literal_pannuke_run_py_port() -> None:
    rng = np.random.default_rng(7)
    n, size, k = 6, 24, 3
    yy, xx = np.mgrid[:size, :size]
    true = np.zeros((n, size, size, k), np.int32)
    pred = np.zeros_like(true)
    for i in range(n):
        for c in range(k):
            for m in range(rng.integers(0, 4)):
                cy, cx, r = *rng.integers(0, size, 2), rng.integers(2, 5)
                true[i, (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r, c] = 10 * m + 7
                dy, dx = rng.integers(-2, 3, 2)
                ch = c if rng.random() < 0.8 else (c + 1) % k
                pred[i, (yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 <= r * r, ch] = 3 * m + 1 + c
    tissues = ["T1", "T2", "T1", "T3", "T2", "T1"]

    mpq_i, bpq_i, class_i = [], [], []
    for i in range(n):
        tb = _loop_binarize(true[i])
        bpq_i.append(np.nan if len(np.unique(tb)) == 1
                     else _loop_pq(tb, _loop_binarize(pred[i])))
        row = [np.nan if len(np.unique(true[i, ..., j])) == 1
               else _loop_pq(true[i, ..., j], pred[i, ..., j]) for j in range(k)]
        class_i.append(row)
        mpq_i.append(np.nan if np.all(np.isnan(row)) else np.nanmean(row))
    per_t = {t: [j for j in range(n) if tissues[j] == t] for t in set(tissues)}
    exp_mpq = np.nanmean([np.nanmean(np.array(mpq_i)[ix]) for ix in per_t.values()])
    exp_bpq = np.nanmean([np.nanmean(np.array(bpq_i)[ix]) for ix in per_t.values()])

    res = aggregate_pq(true, pred, tissues)
    np.testing.assert_allclose(res["per_image"]["mpq"], mpq_i, atol=1e-12)
    np.testing.assert_allclose(res["per_image"]["bpq"], bpq_i, atol=1e-12)
    assert res["mpq"] == pytest.approx(exp_mpq, abs=1e-12)
    assert res["bpq"] == pytest.approx(exp_bpq, abs=1e-12)
    np.testing.assert_allclose(list(res["per_class"].values()), np.nanmean(class_i, axis=0),
                               atol=1e-12)
    assert 0 < res["mpq"] < 1 and 0 < res["bpq"] < 1
