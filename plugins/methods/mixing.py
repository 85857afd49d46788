"""Pure functions of the semi-supervised baselines (github.com/lorenmt/reco ``module_list.py``):
the CutMix box mask, the ClassMix mask and mixing of image/label/confidence (ReCo's loss is in
:mod:`.reco.loss`).

Randomness comes from an optional CPU ``torch.Generator`` (the global torch RNG when None), so a
caller can replay the exact draws; every draw happens on the CPU and indices move to the
tensors' device afterwards.

Mask convention (as ReCo's code): the mixed image i is ``M * x_i + (1 - M) * x_{(i+1) mod B}``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

BoxArea = Literal["fixed", "up_to"]


# --- masks -------------------------------------------------------------------------------------

def cutmix_box(height: int, width: int, box_area: BoxArea = "fixed",
               generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """``(y0, x0, h, w)`` of a rectangle inside an ``height x width`` image.

    ``fixed``  ReCo's ``generate_cutout_mask``: area H*W/2, width uniform in [W/2 + 1, W),
               height round(area / width), placed uniformly; the area is always about 50%.
    ``up_to``  the thesis's wording ("a rectangle that covers up to 50% of the image"): an area
               fraction r uniform in (0, 0.5), a box of the image's aspect ratio with sides
               floor(W*sqrt(r)) and floor(H*sqrt(r)) (at least 1 pixel), placed uniformly; the
               area never exceeds 50%.
    """
    if box_area == "fixed":
        area = height * width / 2.0
        low = width // 2 + 1
        w = int(torch.randint(low, width, (), generator=generator)) if low < width else width
        h = min(height, max(1, int(round(area / w))))
    elif box_area == "up_to":
        r = 0.5 * float(torch.rand((), generator=generator))
        w = max(1, int(math.floor(width * math.sqrt(r))))
        h = max(1, int(math.floor(height * math.sqrt(r))))
    else:
        raise ValueError(f"box_area must be 'fixed' or 'up_to', not {box_area!r}")
    x0 = int(torch.randint(0, width - w + 1, (), generator=generator))
    y0 = int(torch.randint(0, height - h + 1, (), generator=generator))
    return y0, x0, h, w


def cutmix_mask(height: int, width: int, box_area: BoxArea = "fixed",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Float ``(H, W)`` mask: 1 outside the box (image i), 0 inside (image i+1), as ReCo."""
    y0, x0, h, w = cutmix_box(height, width, box_area, generator)
    mask = torch.ones(height, width)
    mask[y0:y0 + h, x0:x0 + w] = 0.0
    return mask


def classmix_mask(pseudo_labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Float mask (shape of ``pseudo_labels``, on its device): the pixels whose class is among
    ``len // 2`` classes picked at random from the classes present in ``pseudo_labels``
    (background included), as ReCo's ``generate_class_mask``. With a single class present
    ``len // 2 == 0``: the mask is all zero, so the mixed image is entirely image i+1."""
    classes = torch.unique(pseudo_labels)
    order = torch.randperm(len(classes), generator=generator).to(classes.device)
    chosen = classes[order][: len(classes) // 2]
    return torch.isin(pseudo_labels, chosen).float()


def mix(images: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor,
        masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix image i with image (i+1) mod B by the binary mask ``masks[i]``; the same mask mixes
    the labels and the confidences. ``images (B, C, H, W)``, ``labels``/``confidence``/``masks``
    ``(B, H, W)``."""
    keep = masks.to(images.device).bool()
    nxt = torch.roll(torch.arange(len(images), device=images.device), -1)
    out_images = torch.where(keep[:, None], images, images[nxt])
    out_labels = torch.where(keep, labels, labels[nxt])
    out_conf = torch.where(keep, confidence, confidence[nxt])
    return out_images, out_labels, out_conf
