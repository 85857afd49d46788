"""HoVer-Net's training loss (vqdang/hover_net ``models/hovernet/utils.py`` and ``run_desc.py``).

Per output, with the repository's PanNuke weights (``opt.py``: every term 1) as defaults:

* NP (nucleus vs background, 2 logits) and NC (class, ``num_classes`` logits): pixel
  cross-entropy of the softmax (the reference clamps probabilities to [1e-7, 1 - 1e-7] before the
  log; ``cross_entropy`` on logits is the same loss without the clamp) plus the Dice loss of the
  softmax against the one-hot target, ``1 - (2 I + 1e-3) / (P + T + 1e-3)`` per channel with sums
  over the batch and pixels, summed over channels (``dice_loss``).
* HV (2 maps): mean squared error over every pixel (``mse_loss``), plus the mean squared error of
  the maps' gradients on nucleus pixels (``msge_loss``): 5x5 derivative kernels
  ``k = d / (dx^2 + dy^2)`` (``get_sobel_kernel(5)``), the horizontal map differentiated along x
  and the vertical one along y, as the HoVer-Net paper's loss L_d defines it (the PyTorch port
  builds its kernels with ``torch.meshgrid``'s ij indexing, which orients them along the other
  axis), squared differences summed over nucleus pixels of both maps and divided by their count.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as nnf

from harness.heads import hover_slices

__all__ = ["HOVER_LOSS_TERMS", "hover_loss", "gradient_kernels"]

#: Loss terms and HoVer-Net's weights (``opt.py``: np bce/dice, hv mse/msge, tp bce/dice = 1).
HOVER_LOSS_TERMS = {"np_ce": 1.0, "np_dice": 1.0, "hv_mse": 1.0, "hv_msge": 1.0,
                    "nc_ce": 1.0, "nc_dice": 1.0}


def gradient_kernels(size: int = 5, device: Any = None) -> torch.Tensor:
    """``(2, 1, size, size)``: the x-derivative kernel (for the horizontal map) and the
    y-derivative kernel (vertical map), ``offset / (dx^2 + dy^2 + 1e-15)``."""
    r = torch.arange(-(size // 2), size // 2 + 1, dtype=torch.float32, device=device)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    norm = dx * dx + dy * dy + 1.0e-15
    return torch.stack([dx / norm, dy / norm]).unsqueeze(1)


def _dice(prob: torch.Tensor, onehot: torch.Tensor, smooth: float = 1e-3) -> torch.Tensor:
    inter = (prob * onehot).sum((0, 2, 3))
    total = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return (1.0 - (2.0 * inter + smooth) / (total + smooth)).sum()


def _ce_dice(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    onehot = nnf.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    return nnf.cross_entropy(logits, target), _dice(logits.softmax(1), onehot)


def _msge(pred: torch.Tensor, true: torch.Tensor, focus: torch.Tensor) -> torch.Tensor:
    k = gradient_kernels(5, pred.device)
    grad_p = nnf.conv2d(pred, k, padding=2, groups=2)
    grad_t = nnf.conv2d(true, k, padding=2, groups=2)
    focus = focus.unsqueeze(1).expand_as(grad_p)
    return (focus * (grad_p - grad_t) ** 2).sum() / (focus.sum() + 1.0e-8)


def hover_loss(logits: torch.Tensor, classes: torch.Tensor, hv: torch.Tensor,
               weights: dict[str, float] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of HoVer-Net's six terms for logits ``(B, 4 + K, H, W)`` (layout of
    :data:`harness.heads.HOVER_LAYOUT`), class maps ``(B, H, W)`` (0 = background) and HV
    targets ``(B, 2, H, W)``; and each term's value (for logs)."""
    w = {**HOVER_LOSS_TERMS, **(weights or {})}
    logits = logits.float()
    sl = hover_slices(logits.shape[1] - 4)
    nuclei = (classes > 0).long()
    terms: dict[str, torch.Tensor] = {}
    terms["np_ce"], terms["np_dice"] = _ce_dice(logits[:, sl["np"]], nuclei)
    pred_hv = logits[:, sl["hv"]]
    terms["hv_mse"] = ((pred_hv - hv) ** 2).mean()
    terms["hv_msge"] = _msge(pred_hv, hv, nuclei.float())
    terms["nc_ce"], terms["nc_dice"] = _ce_dice(logits[:, sl["nc"]], classes)
    total = sum(w[name] * value for name, value in terms.items())
    return total, {name: float(value.detach()) for name, value in terms.items()}
