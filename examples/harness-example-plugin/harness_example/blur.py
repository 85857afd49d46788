"""``example_blur``: a random encoder whose first convolution is a fixed filter bank.

The encoder arrives randomly initialised from the cell's seed; this method overwrites its
first convolution (the one that reads the RGB image) with Gaussian smoothing filters of width
``sigma`` on each colour channel and on grey, and derivative-of-Gaussian edge filters at evenly
spaced orientations. Everything after the first layer stays random.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from harness.hookspecs import hookimpl
from harness.methods import HALF_NORMALIZATION, InitMethod, MethodConfig

if TYPE_CHECKING:  # torch only where it runs: `harness list`/`validate` import this module
    import torch
    from torch import nn


class BlurConfig(MethodConfig):
    sigma: float = Field(1.0, gt=0, le=10,
                         description="width (pixels) of the Gaussian behind every filter")
    edge_fraction: float = Field(0.5, ge=0, le=1,
                                 description="share of the first layer's filters that detect "
                                             "edges; the rest smooth")


def filter_bank(out_channels: int, in_channels: int, size: int, sigma: float,
                edge_fraction: float) -> torch.Tensor:
    """``(out, in, size, size)``: smoothing filters first, then oriented edge filters."""
    import torch

    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    gauss = torch.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    gauss = gauss / gauss.sum()
    n_edges = round(out_channels * edge_fraction)
    bank = torch.zeros(out_channels, in_channels, size, size, dtype=torch.float64)
    for i in range(out_channels - n_edges):  # smoothing: one colour channel, or grey
        colour = i % (in_channels + 1)
        if colour < in_channels:
            bank[i, colour] = gauss
        else:
            bank[i, :] = gauss / in_channels
    for j in range(n_edges):  # edges on grey, orientations spread over 180 degrees
        theta = math.pi * j / n_edges
        deriv = -(math.cos(theta) * xx + math.sin(theta) * yy) / sigma**2 * gauss
        deriv = deriv / deriv.abs().sum().clamp_min(1e-12)  # unit L1 norm
        bank[out_channels - n_edges + j, :] = deriv / in_channels
    return bank


class ExampleBlur(InitMethod):
    name: ClassVar[str] = "example_blur"
    description: ClassVar[str] = ("random encoder with a fixed Gaussian/edge first layer "
                                  "(example plugin)")
    version: ClassVar[str] = "1"  # bump when a change alters results: it is in the stage keys
    seed_dependent: ClassVar[bool] = True  # the layers after the first stay random (seeded)
    Config: ClassVar[type[MethodConfig]] = BlurConfig

    config: BlurConfig

    def init_encoder(self, encoder: nn.Module, encoder_name: str, seed: int) -> dict[str, Any]:
        import torch

        first = next((m for m in encoder.modules()
                      if isinstance(m, torch.nn.Conv2d) and m.in_channels == 3 and m.groups == 1), None)
        if first is None:
            raise ValueError(f"example_blur: encoder '{encoder_name}' has no RGB convolution")
        out_ch, in_ch, kh, kw = first.weight.shape
        bank = filter_bank(out_ch, in_ch, min(kh, kw), self.config.sigma, self.config.edge_fraction)
        size = bank.shape[-1]
        oy, ox = (kh - size) // 2, (kw - size) // 2  # centred in a non-square kernel
        with torch.no_grad():
            first.weight.zero_()
            first.weight[:, :, oy:oy + size, ox:ox + size] = bank.to(first.weight.dtype)
            if first.bias is not None:
                first.bias.zero_()
        return HALF_NORMALIZATION


@hookimpl
def harness_register_methods():
    return [ExampleBlur]
