"""The settings of the two pretraining views (:class:`ViewAugmentConfig`), apart from the
transforms in :mod:`harness.data.views` so that a method's settings import without torch or
torchvision (``harness validate`` and ``harness list`` import every method's settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ViewAugmentConfig(BaseModel):
    """Pretraining view augmentations; defaults are thesis Table A.1 (PRICon, SimCLR).
    SimSiam uses ``jitter=(0.4, 0.4, 0.4, 0.1)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crop_size: int = Field(224, gt=0)
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    #: probability that the horizontal flip is applied (reference: flip when random() > p)
    hflip_p: float = Field(0.5, ge=0.0, le=1.0)
    #: probability that a rotation by k * 90 degrees, k uniform in {1, 2, 3}, is applied
    rot90_p: float = Field(0.5, ge=0.0, le=1.0)
    #: ColorJitter (brightness, contrast, saturation, hue) strengths
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)
    jitter_p: float = Field(0.8, ge=0.0, le=1.0)
    grayscale_p: float = Field(0.2, ge=0.0, le=1.0)
    blur_p: float = Field(0.0, ge=0.0, le=1.0)
    blur_kernel: int = Field(23, gt=0)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    #: image interpolation of the resized crop (antialiased, as PIL's in the reference)
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    #: mask interpolation: "nearest-exact" samples pixel centres like PIL's NEAREST (reference)
    #: and like the image's sampling grid; "nearest" is torch's legacy rule (half a pixel off)
    mask_interpolation: Literal["nearest-exact", "nearest"] = "nearest-exact"

    @model_validator(mode="after")
    def _check(self) -> "ViewAugmentConfig":
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if any(j < 0 for j in self.jitter[:3]) or not 0.0 <= self.jitter[3] <= 0.5:
            raise ValueError(f"jitter strengths must be >= 0 and hue <= 0.5, got {self.jitter}")
        if self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be odd, got {self.blur_kernel}")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        return self
