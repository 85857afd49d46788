"""Joint image/mask augmentations (torchvision transforms v2).

Fine-tuning (thesis A.1, the albumentations 1.1.0 pipeline of the reference code): flip
(horizontal, vertical or both), rot90, Gaussian blur (:class:`RandomGaussianBlurAlb`), Gaussian
noise with variance drawn from (0, 25) on the 0-255 scale; each with p = 0.5; nothing at test
time. Geometric ops act on the image and the mask (``tv_tensors.Mask``) alike; blur and noise
touch the image only.

**The blur rule** (albumentations 1.1.0 ``GaussianBlur(blur_limit=(3, 7), sigma_limit=0)``,
``augmentations/transforms.py``): ``ksize = np.random.randint(3, 7 + 1)``, an even draw becomes
``(ksize + 1) % (7 + 1)`` (4 -> 5, 6 -> 7), so kernels 3/5/7 have probabilities 1/5, 2/5, 2/5
(:func:`blur_kernel_probs`); sigma is 0, so ``cv2.GaussianBlur`` derives the kernel from its
size. For odd sizes up to 7 OpenCV's ``getGaussianKernel`` then uses its fixed table, the
kernels [1 2 1]/4, [1 4 6 4 1]/16 and [2 7 14 18 14 7 2]/64 (standard deviations 0.71, 1.0,
1.37), not a sampled Gaussian (sigma 0.3 * ((k - 1) * 0.5 - 1) + 0.8, i.e. 0.8 / 1.1 / 1.4 for
3 / 5 / 7, is OpenCV's rule for the sizes it does not tabulate: :func:`sigma_for_kernel`).
:func:`blur_kernel_1d` returns what OpenCV applies; borders reflect without
repeating the edge (OpenCV's default ``BORDER_REFLECT_101``, torch's ``reflect``), and the uint8
result rounds half up as OpenCV's fixed-point path. Equality with ``cv2.GaussianBlur`` is tested
on stored OpenCV outputs (``tests/data/cv2_gaussian_blur.npz``).
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


# --- Gaussian blur as albumentations 1.1.0 / OpenCV ------------------------------------------

#: ``GaussianBlur(blur_limit=(3, 7))`` of the reference's fine-tuning pipeline.
BLUR_LIMIT = (3, 7)

#: OpenCV's ``small_gaussian_tab`` (``getGaussianKernel`` with sigma <= 0 and an odd size <= 7).
_OPENCV_SMALL_KERNELS = {1: (1.0,), 3: (1, 2, 1), 5: (1, 4, 6, 4, 1), 7: (2, 7, 14, 18, 14, 7, 2)}


def blur_kernel_probs(blur_limit: tuple[int, int] = BLUR_LIMIT) -> dict[int, float]:
    """Probability of each kernel size under albumentations 1.1.0's draw: uniform integer in
    ``[lo, hi]``, an even value ``k`` replaced by ``(k + 1) % (hi + 1)``. (3, 7) -> {3: 0.2,
    5: 0.4, 7: 0.4}."""
    lo, hi = blur_limit
    counts: dict[int, int] = {}
    for k in range(lo, hi + 1):
        if k != 0 and k % 2 != 1:
            k = (k + 1) % (hi + 1)
        counts[k] = counts.get(k, 0) + 1
    return {k: c / (hi - lo + 1) for k, c in sorted(counts.items())}


def sigma_for_kernel(k: int) -> float:
    """OpenCV's sigma for a kernel of size ``k`` given sigma 0: 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    (0.8, 1.1, 1.4 for 3, 5, 7). OpenCV samples a Gaussian of this sigma only for sizes it does
    not tabulate (above 7; :func:`blur_kernel_1d`)."""
    return 0.3 * ((k - 1) * 0.5 - 1) + 0.8


def blur_kernel_1d(k: int) -> torch.Tensor:
    """The 1-D kernel (float64, sums to 1) ``cv2.GaussianBlur(img, (k, k), 0)`` applies along
    each axis: OpenCV's fixed table for odd ``k <= 7``, else a Gaussian of sigma
    :func:`sigma_for_kernel` sampled at integer offsets (OpenCV's float path for 11 and up;
    OpenCV 5 also tabulates 9, and its uint8 path rounds larger kernels to fixed point). The
    reference draws only 3, 5 and 7, which equal OpenCV bit for bit (tested)."""
    if k < 1 or k % 2 != 1:
        raise ValueError(f"blur kernel size must be odd and positive, got {k}")
    if k in _OPENCV_SMALL_KERNELS:
        w = torch.tensor(_OPENCV_SMALL_KERNELS[k], dtype=torch.float64)
    else:
        x = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
        w = torch.exp(-(x ** 2) / (2 * sigma_for_kernel(k) ** 2))
    return w / w.sum()


def draw_blur_kernel(blur_limit: tuple[int, int] = BLUR_LIMIT) -> int:
    """One kernel size drawn from the torch RNG with :func:`blur_kernel_probs`' distribution."""
    lo, hi = blur_limit
    k = int(torch.randint(lo, hi + 1, ()))
    return (k + 1) % (hi + 1) if k != 0 and k % 2 != 1 else k


def gaussian_blur_cv2(image: torch.Tensor, k: int) -> torch.Tensor:
    """``cv2.GaussianBlur(image, (k, k), 0)`` of a ``(..., C, H, W)`` image: separable
    convolution with :func:`blur_kernel_1d`, reflect-101 borders, in float32 (exact for uint8
    and the tabled kernels: their weights are multiples of 1/64, so the two passes need 14 and
    20 mantissa bits); uint8 rounds half up (OpenCV's fixed point), floats keep their dtype."""
    dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    w = blur_kernel_1d(k).to(dtype)
    shape = image.shape
    x = image.reshape((-1, 1) + shape[-2:]).to(dtype)
    pad = k // 2
    x = torch.nn.functional.pad(x, (pad, pad, 0, 0), mode="reflect")
    x = torch.nn.functional.conv2d(x, w.view(1, 1, 1, k))
    x = torch.nn.functional.pad(x, (0, 0, pad, pad), mode="reflect")
    x = torch.nn.functional.conv2d(x, w.view(1, 1, k, 1)).reshape(shape)
    if image.dtype == torch.uint8:
        return torch.floor(x + 0.5).clamp_(0, 255).to(torch.uint8)
    return x.to(image.dtype)


class RandomGaussianBlurAlb(v2.Transform):
    """albumentations 1.1.0 ``GaussianBlur(blur_limit, sigma_limit=0, p)``: with probability p,
    a kernel size from :func:`draw_blur_kernel` and OpenCV's sigma-0 kernel of that size
    (:func:`gaussian_blur_cv2`); images only."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, blur_limit: tuple[int, int] = BLUR_LIMIT, p: float = 0.5):
        super().__init__()
        self.blur_limit, self.p = tuple(blur_limit), p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(()) >= self.p:
            return {"k": 0}
        return {"k": draw_blur_kernel(self.blur_limit)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["k"] <= 1:
            return inpt
        return tv_tensors.wrap(gaussian_blur_cv2(inpt.as_subclass(torch.Tensor), params["k"]),
                               like=inpt)


def finetune_train_transforms(crop_size: int | None = None, augment: bool = True) -> v2.Transform:
    """uint8 ``Image`` + ``Mask`` in, float ``Image`` in [0, 1] + ``Mask`` out."""
    ops: list[v2.Transform] = []
    if crop_size is not None:
        ops.append(v2.RandomCrop(crop_size))
    if augment:
        ops += [
            RandomFlip(p=0.5),
            RandomRot90(p=0.5),
            RandomGaussianBlurAlb(BLUR_LIMIT, p=0.5),
        ]
    ops.append(v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True))
    if augment:
        ops.append(RandomGaussianNoise((0.0, 25.0), p=0.5))
    return v2.Compose(ops)

