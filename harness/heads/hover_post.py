"""HoVer-Net's post-processing: nucleus probability + HV maps -> instances -> their classes.

:func:`instances_from_maps` follows ``__proc_np_hv`` in vqdang/hover_net
(``models/hovernet/post_proc.py``) step by step with the same library calls (OpenCV, SciPy,
``skimage.segmentation.watershed``): NP >= 0.5, 4-connected components, objects under 10 px
removed; each HV map min-max normalised to [0, 1]; 21x21 Sobel (x on the horizontal map, y on the
vertical), each min-max normalised and inverted; energy = their maximum minus (1 - mask), clipped
at 0; distance = -GaussianBlur3x3((1 - energy) * mask); markers = mask - (energy >= 0.4), clipped,
holes filled, opened with a 5x5 ellipse, labelled, objects under 10 px removed; watershed of the
distance from the markers inside the mask. :func:`instance_classes` is ``process``'s type
rule: the most frequent NC class of an instance's pixels, background only when nothing else
occurs (ties: the lower class id, as the reference's stable sort of ``np.unique``), counted for
all instances at once instead of one bounding box at a time (the reference also skips instances
whose OpenCV contour has fewer than 3 points; they keep their pixels and get a class here).

Equality with the reference is tested on stored outputs of its function
(``tests/data/hover_postproc_expected.npz``); ``benchmarks/test_hover_postproc_speed.py`` times
both on the same maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_SIZE", "instances_from_maps", "instance_classes", "decode_image", "HoverMaps"]

#: ``remove_small_objects(..., min_size=10)``, on the thresholded NP map and on the markers.
MIN_SIZE = 10


def _remove_small(labels: np.ndarray, min_size: int = MIN_SIZE) -> np.ndarray:
    """Zero the labels of fewer than ``min_size`` pixels (``misc/utils.remove_small_objects``
    on a label map)."""
    sizes = np.bincount(labels.ravel())
    labels[(sizes < min_size)[labels]] = 0
    return labels


def instances_from_maps(nuclei: np.ndarray, h_map: np.ndarray, v_map: np.ndarray) -> np.ndarray:
    """Instance map (int32, 0 = background) from the nucleus probability ``(H, W)`` and the
    horizontal and vertical maps ``(H, W)``."""
    import cv2
    from scipy import ndimage
    from skimage.segmentation import watershed

    blb = np.asarray(nuclei, np.float32) >= 0.5
    blb = _remove_small(ndimage.label(blb)[0])
    blb = (blb > 0).astype(np.int32)
    norm = dict(alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)
    h_dir = cv2.normalize(np.asarray(h_map, np.float32), None, **norm)
    v_dir = cv2.normalize(np.asarray(v_map, np.float32), None, **norm)
    sobel_h = 1 - cv2.normalize(cv2.Sobel(h_dir, cv2.CV_64F, 1, 0, ksize=21), None, **norm)
    sobel_v = 1 - cv2.normalize(cv2.Sobel(v_dir, cv2.CV_64F, 0, 1, ksize=21), None, **norm)
    energy = np.maximum(sobel_h, sobel_v) - (1 - blb)
    energy[energy < 0] = 0
    dist = -cv2.GaussianBlur((1.0 - energy) * blb, (3, 3), 0)
    marker = blb - (energy >= 0.4).astype(np.int32)
    marker[marker < 0] = 0
    marker = ndimage.binary_fill_holes(marker).astype(np.uint8)
    marker = cv2.morphologyEx(marker, cv2.MORPH_OPEN,
                              cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    marker = _remove_small(ndimage.label(marker)[0])
    return watershed(dist, markers=marker, mask=blb).astype(np.int32)


def instance_classes(instances: np.ndarray, types: np.ndarray, num_classes: int) -> np.ndarray:
    """Class of every id ``0..max`` of ``instances`` (index = id; 0 for ids absent or only
    background) from the NC argmax map ``types`` (0 = background, ``1..num_classes - 1``)."""
    fg = instances > 0
    n = int(instances.max(initial=0)) + 1
    counts = np.bincount(instances[fg].astype(np.int64) * num_classes + types[fg],
                         minlength=n * num_classes).reshape(n, num_classes)
    fg_counts = counts[:, 1:]
    return np.where(fg_counts.max(1) > 0, fg_counts.argmax(1) + 1, 0).astype(np.uint8)


def decode_image(nuclei: np.ndarray, hv: np.ndarray, types: np.ndarray,
                 num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One image's ``(class map uint8, instance map int32)``: instances painted with their
    class; instances of class 0 (background only) are dropped."""
    inst = instances_from_maps(nuclei, hv[0], hv[1])
    cls_of = instance_classes(inst, types, num_classes)
    classes = cls_of[inst]
    inst[classes == 0] = 0
    return classes, inst


@dataclass
class HoverMaps:
    """A chunk of ``hover`` predictions as the evaluate stage sends them to the scoring
    processes: NP probabilities ``(n, H, W)`` float32, HV maps ``(n, 2, H, W)`` float32 and NC
    argmax ``(n, H, W)`` uint8, for a dataset of ``num_classes`` classes."""

    nuclei: np.ndarray
    hv: np.ndarray
    types: np.ndarray
    num_classes: int

    def __len__(self) -> int:
        return len(self.nuclei)

    def decode(self) -> tuple[np.ndarray, np.ndarray]:
        """Class maps ``(n, H, W)`` uint8 and instance maps ``(n, H, W)`` int32."""
        classes = np.zeros(self.types.shape, np.uint8)
        instances = np.zeros(self.types.shape, np.int32)
        for i in range(len(self)):
            classes[i], instances[i] = decode_image(self.nuclei[i], self.hv[i], self.types[i],
                                                    self.num_classes)
        return classes, instances
