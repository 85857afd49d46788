"""``dice``: binary foreground Dice per image, averaged over images (TNBC)."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np

from harness.hookspecs import hookimpl
from harness.metrics import evaluate_dice
from harness.metrics.family import MetricFamily


class Dice(MetricFamily):
    name: ClassVar[str] = "dice"
    metric_names: ClassVar[tuple[str, ...]] = ("dice",)
    like_for_like: ClassVar[dict[str, tuple[str, str | None]]] = {"dice": ("dice", None)}
    description: ClassVar[str] = "foreground Dice (class > 0) per image, averaged over images"

    def compute(self, pred: np.ndarray, arrays: Any, rows: np.ndarray,
                class_names: Sequence[str]) -> dict[str, Any]:
        return {"dice": evaluate_dice(pred, np.asarray(arrays.classes[rows]))}

    def headline(self, metrics: dict[str, Any], name: str, variant: str | None) -> float | None:
        return metrics["dice"][name]


@hookimpl
def harness_register_metric_families():
    return [Dice]
