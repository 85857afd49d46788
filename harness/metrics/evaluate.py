"""Score semantic predictions with both PQ variants (reference §1.5 and §6.3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .instances import (CONNECTIVITY, instances_to_channels, semantic_to_binary_channels,
                        semantic_to_instances)
from .pq import per_image_pq, summarise_pq

__all__ = ["evaluate_segmentation"]

#: Images converted to per-class channels at a time (bounds memory on a 2,700-image fold).
_CHUNK = 64


def evaluate_segmentation(pred_classes: np.ndarray, true_classes: np.ndarray,
                          true_instances: np.ndarray, tissues: Sequence[str],
                          class_names: Sequence[str]) -> dict[str, Any]:
    """mPQ/bPQ of ``(N, H, W)`` argmax class maps against GT classes and instances.

    * ``"instance"``: standard PanNuke mPQ/bPQ; GT instances split by class versus the
      :data:`~harness.metrics.instances.CONNECTIVITY`-connected components of each predicted class.
    * ``"thesis"``: the thesis/reference-code "stuff-style" PQ; each class of an image is one
      segment on both sides, so a class scores IoU/(1 + 1e-6) if its IoU > 0.5, else 0. A
      prediction covering the whole image is simply one segment (the reference code crashes).

    Both are :func:`~harness.metrics.pq.aggregate_pq` dicts; they are computed in chunks of images
    so that the ``(N, H, W, K)`` channel arrays never exist for the whole set at once.
    """
    pred = np.asarray(pred_classes)
    true = np.asarray(true_classes)
    inst = np.asarray(true_instances)
    if pred.ndim != 3 or pred.shape != true.shape or inst.shape != true.shape:
        raise ValueError(f"expected matching (N, H, W) maps, got pred {pred.shape}, "
                         f"classes {true.shape}, instances {inst.shape}")
    k = len(class_names)
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"instance": [], "thesis": []}
    for start in range(0, pred.shape[0], _CHUNK):
        sl = slice(start, start + _CHUNK)
        parts["instance"].append(per_image_pq(instances_to_channels(inst[sl], true[sl], k),
                                              semantic_to_instances(pred[sl], k)))
        parts["thesis"].append(per_image_pq(semantic_to_binary_channels(true[sl], k),
                                            semantic_to_binary_channels(pred[sl], k)))
    result: dict[str, Any] = {}
    for variant, chunks in parts.items():
        bpq = np.concatenate([b for b, _ in chunks]) if chunks else np.zeros(0)
        class_pq = np.concatenate([c for _, c in chunks]) if chunks else np.zeros((0, k))
        result[variant] = summarise_pq(bpq, class_pq, tissues, class_names)
    result["connectivity"] = CONNECTIVITY
    return result
