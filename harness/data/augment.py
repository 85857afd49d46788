"""Joint image/mask augmentations (torchvision transforms v2).

Fine-tuning (thesis A.1, the albumentations pipeline of the reference code): flip (horizontal,
vertical or both), rot90, Gaussian blur with an odd kernel of 3-7, Gaussian noise with variance
drawn from (0, 25) on the 0-255 scale; each with p = 0.5; nothing at test time. Geometric ops
act on the image and the mask (``tv_tensors.Mask``) alike; blur and noise touch the image only.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


class RandomFlip(v2.Transform):
    """albumentations ``Flip``: with probability p, flip horizontally, vertically or both."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(()) >= self.p:
            return {"mode": None}
        return {"mode": int(torch.randint(0, 3, ()))}  # 0 h, 1 v, 2 both

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        mode = params["mode"]
        if mode in (0, 2):
            inpt = F.horizontal_flip(inpt)
        if mode in (1, 2):
            inpt = F.vertical_flip(inpt)
        return inpt


class RandomRot90(v2.Transform):
    """With probability p, rotate by k * 90 degrees, k uniform in {0, 1, 2, 3} (exact, no
    interpolation), as albumentations ``RandomRotate90``."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(()) >= self.p:
            return {"k": 0}
        return {"k": int(torch.randint(0, 4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["k"] == 0:
            return inpt
        return tv_tensors.wrap(torch.rot90(inpt, params["k"], dims=(-2, -1)), like=inpt) \
            if isinstance(inpt, tv_tensors.TVTensor) else torch.rot90(inpt, params["k"], dims=(-2, -1))


class RandomGaussianNoise(v2.Transform):
    """Additive Gaussian noise with variance uniform in ``var_limit`` (0-255 scale) on a float
    image in [0, 1], with probability p; masks pass through untouched."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, var_limit: tuple[float, float] = (0.0, 25.0), p: float = 0.5):
        super().__init__()
        self.var_limit = var_limit
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(()) >= self.p:
            return {"sigma": 0.0}
        var = float(torch.empty(()).uniform_(*self.var_limit))
        return {"sigma": var ** 0.5 / 255.0}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["sigma"] == 0.0:
            return inpt
        noisy = inpt + torch.randn_like(inpt) * params["sigma"]
        return tv_tensors.wrap(noisy.clamp_(0.0, 1.0), like=inpt)


def finetune_train_transforms(crop_size: int | None = None, augment: bool = True) -> v2.Transform:
    """uint8 ``Image`` + ``Mask`` in, float ``Image`` in [0, 1] + ``Mask`` out."""
    ops: list[v2.Transform] = []
    if crop_size is not None:
        ops.append(v2.RandomCrop(crop_size))
    if augment:
        ops += [
            RandomFlip(p=0.5),
            RandomRot90(p=0.5),
            v2.RandomApply([v2.RandomChoice([v2.GaussianBlur(k) for k in (3, 5, 7)])], p=0.5),
        ]
    ops.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
    if augment:
        ops.append(RandomGaussianNoise((0.0, 25.0), p=0.5))
    return v2.Compose(ops)


def eval_transforms() -> v2.Transform:
    return v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)
