"""A linear probe of a frozen encoder, for learning checks.

Ridge regression (closed form, float64) from an encoder's feature map at one level to the class
fractions of each feature-map cell (the ground-truth class map pooled onto the same grid),
fitted on training images and scored on held-out ones as R^2 over all classes; the score of an
encoder is the mean R^2 over the levels in :data:`LEVELS`. It measures how
much of the nucleus classes an encoder's features carry, with no training loop of its own: the
same encoder gives the same score to float precision on any machine, so a learning check built
on it sees the spread of the pretraining alone, not that of a fine-tuning run on top of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.engine.model import build_encoder

#: smp ResNet feature indices 3 and 4: layer2's and layer3's outputs (strides 8 and 16: 8x8 and
#: 4x4 grids on 64 px images), the deepest maps with enough cells at this size to fit (layer4's
#: is 2x2). Pretraining changes these layers most; their mean is steadier than either alone.
LEVELS = (3, 4)
RIDGE = 10.0


def encoder_features(stage_dir: Path, images: np.ndarray, level: int) -> torch.Tensor:
    """(N, D, R, R) features of uint8 NHWC ``images`` from the encoder artifact in ``stage_dir``
    (``encoder.pt`` + ``encoder.json``), inputs normalised as the artifact records.

    Batch-norm statistics are recomputed on ``images`` for every encoder (as the frozen
    protocol's ``frozen_bn: adapt`` does): a random encoder's stored statistics are its
    initial 0/1, a pretrained one's come from its unlabeled data, and comparing them as stored
    would credit pretraining with what is only a normalisation."""
    meta = json.loads((stage_dir / "encoder.json").read_text())
    encoder = build_encoder(meta["encoder"])
    encoder.load_state_dict(torch.load(stage_dir / "encoder.pt", map_location="cpu", weights_only=True))
    mean = torch.tensor(meta["normalization"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["normalization"]["std"]).view(1, 3, 1, 1)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - mean) / std
    for module in encoder.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the pass below
    with torch.no_grad():
        encoder.train()(x)
        return encoder.eval()(x)[level]


def probe_r2(features: torch.Tensor, classes: np.ndarray, num_classes: int, train: np.ndarray,
             test: np.ndarray, ridge: float = RIDGE) -> float:
    """R^2 on the ``test`` images of a ridge fit on the ``train`` images (index arrays) from each
    cell's standardised features to its class fractions."""
    grid = features.shape[-1]
    one_hot = F.one_hot(torch.from_numpy(np.asarray(classes, dtype=np.int64)), num_classes)
    fractions = F.adaptive_avg_pool2d(one_hot.permute(0, 3, 1, 2).float(), grid)

    def cells(t: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        return t[torch.as_tensor(rows)].permute(0, 2, 3, 1).reshape(-1, t.shape[1]).double()

    x_tr, x_te = cells(features, train), cells(features, test)
    y_tr, y_te = cells(fractions, train), cells(fractions, test)
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    y_mean = y_tr.mean(0)
    gram = x_tr.T @ x_tr + ridge * torch.eye(x_tr.shape[1], dtype=x_tr.dtype)
    weights = torch.linalg.solve(gram, x_tr.T @ (y_tr - y_mean))
    residual = ((y_te - y_mean - x_te @ weights) ** 2).sum()
    total = ((y_te - y_mean) ** 2).sum()
    return float(1.0 - residual / total)


def probe_score(stage_dir: Path, images: np.ndarray, classes: np.ndarray, num_classes: int,
                train: np.ndarray, test: np.ndarray) -> float:
    """Mean probe R^2 over :data:`LEVELS` of the encoder artifact in ``stage_dir``."""
    scores = [probe_r2(encoder_features(stage_dir, images, level), classes, num_classes, train, test)
              for level in LEVELS]
    return float(np.mean(scores))
