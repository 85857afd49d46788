"""The torch half of the ``probe`` protocol (:mod:`harness.protocols.probe`): frozen features,
streamed sums of squares, the closed-form ridge fit and its R^2."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as nnf

from harness.data.torchdata import Normalizer
from harness.engine.finetune import load_encoder_artifact
from harness.engine.model import build_encoder
from harness.protocols.knn import patch_labels


def probe_encoder(ctx: Any, arrays: Any, train_ids: Sequence[str], test_ids: Sequence[str],
                  num_classes: int, class_names: list[str], settings: Any, *, ridge: float,
                  strides: Sequence[int]) -> dict[str, Any]:
    """Fit on ``train_ids`` (penalty ``ridge``, feature maps of ``strides``), score on
    ``test_ids``; writes ``metrics.json`` and returns the stage's result (what the record's
    ``train``/``evaluation`` summaries show)."""
    from harness.store import atomic_write_json

    state, meta = load_encoder_artifact(ctx.inputs["encoder"])
    encoder = build_encoder(settings.encoder, settings.encoder_args)
    encoder.load_state_dict(state, strict=True)
    encoder.to(ctx.device)
    normalizer = Normalizer(meta["normalization"], settings.normalization)
    index = arrays.index_of()
    train, test = [index[s] for s in train_ids], [index[s] for s in test_ids]
    batches = _Batches(arrays, normalizer, ctx.device, settings.eval_batch_size, num_classes, strides)
    if settings.frozen_bn == "adapt":
        adapt_batch_norm(encoder, batches, train)
    encoder.eval()
    grids = [f"{g}x{g}" for g in levels_of(encoder, batches, train[:1])]
    fits = [Ridge(num_classes, ridge) for _ in grids]
    for levels in batches.features(encoder, train):
        for fit, (x, y) in zip(fits, levels):
            fit.add_train(x, y)
    for fit in fits:
        fit.solve()
    for levels in batches.features(encoder, test):
        for fit, (x, y) in zip(fits, levels):
            fit.add_test(x, y)
    names = ["background", *class_names][:num_classes]
    per_level = [fit.r2() for fit in fits]
    overall = sum(r for r, _ in per_level) / len(per_level)
    per_class = {n: _mean([pc[i] for _, pc in per_level]) for i, n in enumerate(names)}
    metrics = {"probe_r2": overall, "per_level": {g: r for g, (r, _) in zip(grids, per_level)},
               "per_class": per_class}
    atomic_write_json(ctx.out / "metrics.json", metrics)
    return {"train_images": len(train), "test_images": len(test), "levels": grids,
            "probe_r2": overall, "ridge": ridge}


class _Batches:
    """Normalised image batches of some rows, and their class maps."""

    def __init__(self, arrays: Any, normalizer: Normalizer, device: torch.device, size: int,
                 num_classes: int, strides: Sequence[int]):
        self.arrays, self.normalizer, self.device, self.size = arrays, normalizer, device, size
        self.num_classes, self.strides = num_classes, tuple(strides)

    def images(self, rows: list[int]):
        for start in range(0, len(rows), self.size):
            idx = rows[start:start + self.size]
            x = torch.from_numpy(self.arrays.images[idx]).to(self.device).permute(0, 3, 1, 2).float()
            yield idx, self.normalizer(x.div_(255.0))

    @torch.no_grad()
    def features(self, encoder: torch.nn.Module, rows: list[int]):
        """Per batch, per level: the cell features ``(n, D)`` and the class fractions ``(n, C)``
        of those cells (float64)."""
        for idx, x in self.images(rows):
            maps = probe_levels(encoder(x), x.shape[-1], self.strides)
            y = torch.from_numpy(self.arrays.classes[idx].astype("int64")).to(self.device)
            yield [(m.permute(0, 2, 3, 1).flatten(0, 2).double(),
                    patch_labels(y, self.num_classes, m.shape[-2:]).double()) for m in maps]


def levels_of(encoder: torch.nn.Module, batches: _Batches, rows: list[int]) -> list[int]:
    """The grid sizes of the probed levels on the images of ``rows``."""
    with torch.no_grad():
        _, x = next(batches.images(rows))
        return [m.shape[-1] for m in probe_levels(encoder(x), x.shape[-1], batches.strides)]


def probe_levels(out: Any, width: int, strides: Sequence[int]) -> list[torch.Tensor]:
    """The encoder outputs probed: maps whose stride (``width`` / map width) is one of
    ``strides``, else the deepest map."""
    maps = [m for m in (out if isinstance(out, (list, tuple)) else [out]) if m.shape[1] > 0]
    chosen = [m for m in maps if width % m.shape[-1] == 0 and width // m.shape[-1] in strides]
    return chosen or maps[-1:]


@torch.no_grad()
def adapt_batch_norm(encoder: torch.nn.Module, batches: _Batches, rows: list[int]) -> None:
    """Batch-norm running statistics recomputed as the cumulative average over the batches of
    ``rows`` (a pass in training mode, no gradient)."""
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    encoder.train()
    for _, x in batches.images(rows):
        encoder(x)


class Ridge:
    """Ridge regression of targets ``y`` ``(n, C)`` on standardised features ``x`` ``(n, D)``,
    from sums accumulated batch by batch (float64)."""

    def __init__(self, num_classes: int, penalty: float):
        self.c, self.penalty = num_classes, penalty
        self.n = 0
        self.sx = self.sxx = self.sxy = self.sy = None
        self.res = self.tot = None

    def add_train(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.sx is None:
            d = x.shape[1]
            self.sx, self.sxx = x.new_zeros(d), x.new_zeros(d, d)
            self.sxy, self.sy = x.new_zeros(d, self.c), x.new_zeros(self.c)
        self.n += len(x)
        self.sx += x.sum(0)
        self.sxx += x.T @ x
        self.sxy += x.T @ y
        self.sy += y.sum(0)

    def solve(self) -> None:
        n = self.n
        self.mu = self.sx / n
        cov = self.sxx - n * torch.outer(self.mu, self.mu)  # centred cross-products
        self.sd = (cov.diagonal().clamp_min(0) / max(n - 1, 1)).sqrt() + 1e-6
        self.y_mean = self.sy / n
        xy = (self.sxy - n * torch.outer(self.mu, self.y_mean)) / self.sd[:, None]
        gram = cov / torch.outer(self.sd, self.sd) + self.penalty * torch.eye(len(self.mu), dtype=cov.dtype,
                                                                        device=cov.device)
        self.w = torch.linalg.solve(gram, xy)
        self.res, self.tot = self.w.new_zeros(self.c), self.w.new_zeros(self.c)

    def add_test(self, x: torch.Tensor, y: torch.Tensor) -> None:
        centred = y - self.y_mean
        self.res += ((centred - ((x - self.mu) / self.sd) @ self.w) ** 2).sum(0)
        self.tot += (centred ** 2).sum(0)

    def r2(self) -> tuple[float, list[float]]:
        """R^2 over all classes, and per class (None for a class constant over the test cells)."""
        overall = float(1.0 - self.res.sum() / self.tot.sum())
        per_class = [float(1.0 - r / t) if t > 0 else None for r, t in zip(self.res, self.tot)]
        return overall, per_class


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None
