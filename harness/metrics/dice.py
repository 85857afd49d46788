"""Binary foreground Dice for TNBC (Naylor et al., IEEE TMI 2019).

Dice = 2|P ∩ G| / (|P| + |G|) on nucleus-versus-background masks (class > 0), the "traditional
dice" ``get_dice_1`` of HoVer-Net. It is computed per image and averaged over images; an image
where both masks are empty scores 1.0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["dice_per_image", "evaluate_dice"]


def _batch(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        return a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must be (H, W) or (N, H, W), got shape {a.shape}")
    return a


def dice_per_image(pred_classes: np.ndarray, true_classes: np.ndarray) -> np.ndarray:
    """Foreground Dice of each image, shape ``(N,)`` (a 2-D input counts as one image)."""
    pred = _batch(pred_classes, "pred_classes") > 0
    true = _batch(true_classes, "true_classes") > 0
    if pred.shape != true.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs true {true.shape}")
    inter = np.logical_and(pred, true).sum(axis=(1, 2), dtype=np.int64)
    total = pred.sum(axis=(1, 2), dtype=np.int64) + true.sum(axis=(1, 2), dtype=np.int64)
    dice = np.ones(pred.shape[0], dtype=np.float64)
    nonempty = total > 0
    dice[nonempty] = 2.0 * inter[nonempty] / total[nonempty]
    return dice


def evaluate_dice(pred_classes: np.ndarray, true_classes: np.ndarray) -> dict[str, Any]:
    """``{"dice": mean over images, "per_image": [...]}`` (mean is NaN for zero images)."""
    per_image = dice_per_image(pred_classes, true_classes)
    mean = float(per_image.mean()) if per_image.size else math.nan
    return {"dice": mean, "per_image": [float(v) for v in per_image]}
