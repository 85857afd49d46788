"""SimSiam's loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["simsiam_loss"]


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """SimSiam's symmetric negative cosine with stop-gradient (``simsiam:main_simsiam.py`` L295)::

        loss = -1/2 * ( mean_b cos(p1_b, sg(z2_b)) + mean_b cos(p2_b, sg(z1_b)) )

    ``p`` are predictor outputs, ``z`` projector outputs, all (B, D). No gradient flows into
    ``z1``/``z2`` through this loss (they are detached). Minimum -1.
    """
    return -0.5 * (F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
                   + F.cosine_similarity(p2, z1.detach(), dim=-1).mean())
