"""PQ on PanNuke-like instance ids (sparse, up to ~4,000) against contiguous ids.

PanNuke's masks number nuclei with ids up to ~4,000 with a few dozen nuclei per image and class
channel; predicted instances (connected components) are numbered 1..n. The score must not depend
on the id layout, in value (bit-identical) or much in time. Baselines measured in the same run:

* PanNuke-metrics' per-instance loop (``remap_label`` + ``get_fast_pq``), on both layouts;
* the previous implementation of this harness (:func:`previous_panoptic_quality` below, kept
  verbatim as the baseline): every sparse side relabelled over the full image with a lookup
  table, then a joint histogram of every pixel; and its per-image scoring (channel-last slices,
  full-image binarisation).

Figures: PQ of one map pair on sparse ids against the previous implementation (target 3x;
gated at 2x), each layout against the loop (at least 10x), and the evaluation of PanNuke-like
images (argmax class maps against GT instances with sparse ids; both PQ variants, 5 classes and
bPQ) against the previous implementation (gated at 1.5x), all with equal values.

Run: ``.venv/bin/python -m pytest benchmarks/test_pq_sparse_ids.py -m benchmark -s``
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.metrics import panoptic_quality
from harness.metrics.evaluate import score_chunk
from harness.metrics.instances import (instances_to_channels, semantic_to_binary_channels,
                                       semantic_to_instances)
from test_pq_speed import _best_of, get_fast_pq_loop, make_pair

N_CLASSES = 5
#: Gates, below the measured figures to absorb a shared machine's noise: sparse ids 3.0-3.5x
#: (2.7x with a CI run beside it), evaluation 2.0-2.4x.
SPARSE_TARGET = 2.0
EVALUATION_TARGET = 1.5
LOOP_TARGET = 10.0


# --- the previous implementation (baseline) ----------------------------------------------------

def _previous_compact(flat: np.ndarray) -> np.ndarray:
    top = int(flat.max())
    if top <= 4 * flat.size + (1 << 16):
        present = np.bincount(flat, minlength=1) > 0
        present[0] = False
        return np.cumsum(present, dtype=np.intp)[flat]
    ids, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.intp, copy=False)
    return inverse if ids[0] == 0 else inverse + 1


def previous_panoptic_quality(true: np.ndarray, pred: np.ndarray) -> tuple:
    t = np.asarray(true).ravel().astype(np.intp)
    p = np.asarray(pred).ravel().astype(np.intp)
    n_pix = t.size
    n_t, n_p = int(t.max()) + 1, int(p.max()) + 1
    if n_t * n_p > n_pix and n_t >= n_p:
        t = _previous_compact(t)
        n_t = int(t.max()) + 1
    if n_t * n_p > n_pix:
        p = _previous_compact(p)
        n_p = int(p.max()) + 1
    if n_t * n_p > n_pix:
        t = _previous_compact(t)
        n_t = int(t.max()) + 1
    keys = t * n_p + p
    if n_t * n_p <= max(n_pix, 1 << 12):
        joint = np.bincount(keys, minlength=n_t * n_p).reshape(n_t, n_p)
        t_area, p_area = joint.sum(axis=1), joint.sum(axis=0)
        ti, pi = np.nonzero(joint[1:, 1:])
        inter = joint[1:, 1:][ti, pi]
        ti += 1
        pi += 1
    else:
        t_area, p_area = np.bincount(t, minlength=n_t), np.bincount(p, minlength=n_p)
        fg = (t > 0) & (p > 0)
        pair_keys, inter = np.unique(keys[fg], return_counts=True)
        ti, pi = np.divmod(pair_keys, n_p)
    n_true, n_pred = int(np.count_nonzero(t_area[1:])), int(np.count_nonzero(p_area[1:]))
    iou = inter / (t_area[ti] + p_area[pi] - inter)
    matched = iou[iou > 0.5]
    tp = int(matched.size)
    fp, fn = n_pred - tp, n_true - tp
    if tp + fp + fn == 0:
        return math.nan, math.nan, math.nan, 0, 0, 0
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(matched.sum()) / (tp + 1.0e-6)
    return dq, sq, dq * sq, tp, fp, fn


def _previous_binarize(ch: np.ndarray) -> np.ndarray:
    out = np.zeros(ch.shape[:2], dtype=np.int64)
    offset = 0
    for c in range(ch.shape[2]):
        layer = ch[..., c].astype(np.int64, copy=False)
        fg = layer > 0
        if fg.any():
            out[fg] = layer[fg] + offset
            offset += int(layer.max())
    return out


def previous_per_image_pq(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, _, _, n_cls = true.shape
    bpq, class_pq = np.full(n, np.nan), np.full((n, n_cls), np.nan)
    for i in range(n):
        t_bin = _previous_binarize(true[i])
        if t_bin.min() != t_bin.max():
            bpq[i] = previous_panoptic_quality(t_bin, _previous_binarize(pred[i]))[2]
        for j in range(n_cls):
            t = true[i, :, :, j]
            if t.min() != t.max():
                class_pq[i, j] = previous_panoptic_quality(t, pred[i, :, :, j])[2]
    return bpq, class_pq


# --- PanNuke-like maps -------------------------------------------------------------------------

def sparse_lut(n_ids: int, seed: int, top: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([[0], np.sort(rng.choice(np.arange(1, top), n_ids, replace=False))])


def pannuke_like(n_images: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(GT classes, GT instances with ids up to ~4,000, predicted classes)``, ``(N, 256, 256)``:
    GT nuclei of random classes, and a perturbed prediction of them (some shifted, split,
    missed or spurious; a fifth of them given another class)."""
    rng = np.random.default_rng(0)
    classes_t, instances, classes_p = [], [], []
    for i in range(n_images):
        true, pred = make_pair(i)
        cls_of = rng.integers(1, N_CLASSES + 1, size=int(true.max()) + 1)
        cls_of[0] = 0
        classes_t.append(cls_of[true].astype(np.uint8))
        wrong = rng.integers(1, N_CLASSES + 1, size=true.shape)
        p_cls = np.where(rng.random() < 0.2, wrong, np.maximum(cls_of[true], 1))
        classes_p.append(np.where(pred > 0, p_cls, 0).astype(np.uint8))
        instances.append(sparse_lut(int(true.max()), i)[true].astype(np.int32))
    return np.stack(classes_t), np.stack(instances), np.stack(classes_p)


def previous_scoring(pred: np.ndarray, true: np.ndarray, inst: np.ndarray) -> dict:
    """The previous evaluation of a chunk: (N, H, W, K) channel arrays of both variants, then
    per-image PQ of their channel-last slices."""
    k = N_CLASSES
    return {"instance": previous_per_image_pq(instances_to_channels(inst, true, k),
                                              semantic_to_instances(pred, k)),
            "thesis": previous_per_image_pq(semantic_to_binary_channels(true, k),
                                            semantic_to_binary_channels(pred, k))}


@pytest.mark.benchmark(group="pq_id_layouts")
def test_pq_both_id_layouts_against_the_loop(benchmark) -> None:
    true, pred = make_pair(0)
    lut_t, lut_p = sparse_lut(int(true.max()), 1), sparse_lut(int(pred.max()), 2)
    layouts = {"contiguous": (true, pred), "sparse": (lut_t[true], lut_p[pred])}
    times = {}
    for name, (t, p) in layouts.items():
        result = panoptic_quality(t, p)
        reference = get_fast_pq_loop(t, p)
        assert tuple(result[3:]) == reference[3:]
        np.testing.assert_allclose(result[:3], reference[:3], rtol=0, atol=1e-12)
        assert result == panoptic_quality(true, pred)  # bit-identical across layouts
        fast = _best_of(panoptic_quality, (t, p), 300)
        loop = _best_of(get_fast_pq_loop, (t, p), 20)
        previous = _best_of(previous_panoptic_quality, (t, p), 300)
        times[name] = (fast, previous, loop)
        print(f"\n{name:>10} ids: {fast * 1e6:6.0f} us (previous {previous * 1e6:6.0f} us, "
              f"{previous / fast:.1f}x; per-instance loop {loop * 1e6:7.0f} us, {loop / fast:.0f}x)")
        benchmark.extra_info[f"{name}_us"] = fast * 1e6
        benchmark.extra_info[f"{name}_previous_us"] = previous * 1e6
        benchmark.extra_info[f"{name}_loop_us"] = loop * 1e6
        assert loop / fast >= LOOP_TARGET
        if name == "sparse":
            assert previous / fast >= SPARSE_TARGET
    ratio = times["sparse"][0] / times["contiguous"][0]
    benchmark.extra_info["sparse_over_contiguous"] = ratio
    print(f"sparse / contiguous: {ratio:.2f} (previous "
          f"{times['sparse'][1] / times['contiguous'][1]:.2f})")
    benchmark.pedantic(panoptic_quality, args=layouts["sparse"], rounds=100, iterations=1)


@pytest.mark.benchmark(group="pq_id_layouts")
def test_evaluation_of_pannuke_like_images_against_previous(benchmark) -> None:
    true, inst, pred = pannuke_like()
    new, old = score_chunk(pred, true, inst, N_CLASSES), previous_scoring(pred, true, inst)
    for variant in ("instance", "thesis"):
        for a, b in zip(new[variant], old[variant]):
            np.testing.assert_array_equal(a, b)  # same values, NaNs in the same places
    n = pred.shape[0]
    fast = _best_of(score_chunk, (pred, true, inst, N_CLASSES), 10) / n
    previous = _best_of(previous_scoring, (pred, true, inst), 10) / n
    speedup = previous / fast
    print(f"\nscoring a PanNuke-like 256 px image (5 classes, both variants): {fast * 1e3:.2f} ms "
          f"(previous {previous * 1e3:.2f} ms, {speedup:.1f}x)")
    benchmark.extra_info.update(per_image_ms=fast * 1e3, previous_per_image_ms=previous * 1e3,
                                speedup_vs_previous=speedup)
    benchmark.pedantic(score_chunk, args=(pred, true, inst, N_CLASSES), rounds=5, iterations=1)
    assert speedup >= EVALUATION_TARGET
