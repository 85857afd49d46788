"""``pq``: PanNuke panoptic quality (multi-class nuclei), both variants always recorded.

``instance`` is the PanNuke protocol (predicted instances are connected components of each
class); ``thesis`` scores each class of an image as one segment, as the thesis's evaluation code
did, which is what the thesis's published "PQ" means (the like-for-like column).

The official PanNuke metric is ``pq_variant: instance`` on ground truth with void pixels as
background (``pannuke``'s ``void_policy: background``, what an unset policy becomes with that
variant); the thesis's numbers are ``pq_variant: thesis`` on its masks (``void_policy: thesis``,
void -> neoplastic). Validation rejects the two mixed pairs.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence

import numpy as np

from harness.hookspecs import hookimpl
from harness.metrics import evaluate_segmentation
from harness.metrics.evaluate import score_chunk, summarise_chunks
from harness.metrics.family import MetricFamily
from harness.metrics.stream import StreamingScorer


class PanopticQuality(MetricFamily):
    name: ClassVar[str] = "pq"
    metric_names: ClassVar[tuple[str, ...]] = ("mpq", "bpq")
    variants: ClassVar[tuple[str, ...]] = ("instance", "thesis")
    like_for_like: ClassVar[dict[str, tuple[str, str | None]]] = {"pq": ("mpq", "thesis")}
    description: ClassVar[str] = "mPQ (per tissue, then over tissues) and bPQ, PanNuke protocol"
    aggregation: ClassVar[str] = (
        "PQ per image (mPQ: mean over the classes present in the image's ground truth), mean "
        "over the images of each tissue, mean over tissues (a single-tissue dataset: mean over "
        "images); the report then averages the test folds and seeds")

    def compute(self, pred: np.ndarray, arrays: Any, rows: np.ndarray,
                class_names: Sequence[str]) -> dict[str, Any]:
        true_classes = np.asarray(arrays.classes[rows])
        true_inst = np.asarray(arrays.instances[rows])
        tissues = [arrays.tissues[r] for r in rows]
        return evaluate_segmentation(pred, true_classes, true_inst, tissues, list(class_names))

    def scorer(self, arrays: Any, rows: np.ndarray, class_names: Sequence[str],
               workers: int) -> StreamingScorer:
        # every image scores on its own: chunks are scored while the model predicts the next
        rows = np.asarray(rows)
        tissues = [arrays.tissues[r] for r in rows]
        names = list(class_names)

        def truth(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
            sel = rows[start:stop]
            return np.asarray(arrays.classes[sel]), np.asarray(arrays.instances[sel])

        return StreamingScorer(functools.partial(_score, k=len(names)), truth,
                               lambda chunks: summarise_chunks(chunks, tissues, names), workers)

    def headline(self, metrics: dict[str, Any], name: str, variant: str | None) -> float | None:
        return metrics[variant][name]


def _score(pred: np.ndarray, true: np.ndarray, inst: np.ndarray, k: int) -> Any:
    return score_chunk(pred, true, inst, k)


@hookimpl
def harness_register_metric_families():
    return [PanopticQuality]
