"""Segmentation metrics: PanNuke panoptic quality (instance and thesis variants) and Dice.

* :func:`panoptic_quality` -- PQ of one pair of instance maps (PanNuke ``get_fast_pq``).
* :func:`aggregate_pq` -- dataset mPQ/bPQ with per-image, per-tissue nanmeans (``pnm:run.py``);
  whole arrays, for small data. :func:`aggregate_pq_chunks` -- the same, a chunk at a time.
* :func:`evaluate_segmentation` -- both PQ variants for argmax class maps.
* :func:`evaluate_dice` / :func:`dice_per_image` -- binary foreground Dice (TNBC).
"""

from .dice import dice_per_image, evaluate_dice
from .evaluate import evaluate_segmentation
from .instances import (CONNECTIVITY, instances_to_channels, semantic_to_binary_channels,
                        semantic_to_instances)
from .pq import (PQResult, aggregate_pq, aggregate_pq_chunks, binarize_channels,
                 panoptic_quality, per_image_pq, summarise_pq)

__all__ = [
    "CONNECTIVITY",
    "PQResult",
    "aggregate_pq",
    "aggregate_pq_chunks",
    "binarize_channels",
    "dice_per_image",
    "evaluate_dice",
    "evaluate_segmentation",
    "instances_to_channels",
    "panoptic_quality",
    "per_image_pq",
    "semantic_to_binary_channels",
    "semantic_to_instances",
    "summarise_pq",
]
