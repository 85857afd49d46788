"""From a head's logits to what the evaluate stage scores.

``semantic``: the argmax class map (uint8). ``hover``: a
:class:`~harness.heads.hover_post.HoverMaps` chunk (NP probability, HV maps, NC argmax) that the
PQ family's scoring processes post-process into instances (:meth:`HoverMaps.decode`) while the
model predicts the next batch, so the watershed overlaps inference as scoring does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from harness.heads import hover_slices
from harness.heads.hover_post import HoverMaps

__all__ = ["DESCRIPTION", "reader", "decoded"]

#: How each head's predicted instances are made (recorded in ``metrics.json``).
DESCRIPTION = {
    "semantic": "connected components of each class's argmax",
    "hover": "HoVer-Net post-processing (NP >= 0.5, HV Sobel energy, marker watershed; "
             "instance class = majority NC class)",
}


class _Semantic:
    def read(self, logits: torch.Tensor) -> np.ndarray:
        return logits.argmax(1).to(torch.uint8).cpu().numpy()

    def empty(self, n: int, shape: tuple[int, int]) -> np.ndarray:
        return np.zeros((n,) + shape, np.uint8)


class _Hover:
    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.sl = hover_slices(num_classes)

    def read(self, logits: torch.Tensor) -> HoverMaps:
        logits = logits.float()
        nuclei = logits[:, self.sl["np"]].softmax(1)[:, 1]
        return HoverMaps(nuclei.cpu().numpy(), logits[:, self.sl["hv"]].cpu().numpy(),
                         logits[:, self.sl["nc"]].argmax(1).to(torch.uint8).cpu().numpy(),
                         self.num_classes)

    def empty(self, n: int, shape: tuple[int, int]) -> HoverMaps:
        return HoverMaps(np.zeros((n,) + shape, np.float32), np.zeros((n, 2) + shape, np.float32),
                         np.zeros((n,) + shape, np.uint8), self.num_classes)


def reader(head: str, num_classes: int) -> Any:
    """An object with ``read(logits)`` (a chunk of predictions) and ``empty(n, (H, W))``."""
    return _Hover(num_classes) if head == "hover" else _Semantic()


def decoded(scorer: Any, parts: list[Any]) -> dict[str, np.ndarray] | None:
    """The class and instance maps the scoring processes decoded from ``hover`` chunks, in
    order (None for class-map chunks)."""
    if not parts or isinstance(parts[0], np.ndarray):
        return None
    maps = [r["maps"] for r in getattr(scorer, "chunk_results", [])]
    if not maps:  # a family that scored without decoding: decode here
        maps = [p.decode() for p in parts]
    return {"classes": np.concatenate([c for c, _ in maps]),
            "instances": np.concatenate([i for _, i in maps])}
