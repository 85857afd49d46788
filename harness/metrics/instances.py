"""Converting semantic and instance maps into the per-class channels that PQ consumes.

Semantic maps hold class ids with 0 = background and ``1..K`` = foreground classes (the dataset
contract in :mod:`harness.data.base`). Every function accepts one ``(H, W)`` map or a batch
``(N, H, W)`` and returns ``(H, W, K)`` or ``(N, H, W, K)`` accordingly; channel ``c`` belongs to
class ``c + 1``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CONNECTIVITY",
    "semantic_to_instances",
    "instances_to_channels",
    "semantic_to_binary_channels",
]

#: Predicted instances are the 4-connected components of each class's argmax mask (the default
#: structure of ``scipy.ndimage.label``). 4-connectivity keeps two nuclei that touch only at a
#: diagonal corner apart, which is the common case for adjacent nuclei in a 256 px argmax map;
#: ``skimage.measure.label`` would merge them (its 2-D default is 8-connectivity).
CONNECTIVITY = 4

#: ``scipy.ndimage.generate_binary_structure(2, 1)`` and ``(2, 2)``, spelled out so that importing
#: this module imports no scipy (listing and validating specs import the metric families)
_STRUCTURES = {
    4: np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool),
    8: np.ones((3, 3), dtype=bool),
}


def _as_batch(classes: np.ndarray, num_fg_classes: int, name: str = "classes"
              ) -> tuple[np.ndarray, bool]:
    """Return a ``(N, H, W)`` view and whether the input was a single 2-D map; check class ids."""
    a = np.asarray(classes)
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be (H, W) or (N, H, W), got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise ValueError(f"{name} must hold integer class ids, got dtype {a.dtype}")
    if num_fg_classes < 1:
        raise ValueError(f"num_fg_classes must be >= 1, got {num_fg_classes}")
    if a.size and (int(a.min()) < 0 or int(a.max()) > num_fg_classes):
        raise ValueError(f"{name} values must lie in 0..{num_fg_classes}, "
                         f"got {int(a.min())}..{int(a.max())}")
    single = a.ndim == 2
    return (a[None] if single else a), single


def semantic_to_instances(classes: np.ndarray, num_fg_classes: int,
                          connectivity: int = CONNECTIVITY) -> np.ndarray:
    """Connected components of each foreground class as instance channels (int32).

    Channel ``c`` holds the components of class ``c + 1`` numbered ``1..n`` per image and channel;
    0 elsewhere. ``connectivity`` is 4 (default, see :data:`CONNECTIVITY`) or 8.
    """
    if connectivity not in _STRUCTURES:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    batch, single = _as_batch(classes, num_fg_classes)
    from scipy import ndimage

    structure = _STRUCTURES[connectivity]
    out = np.zeros(batch.shape + (num_fg_classes,), dtype=np.int32)
    for i in range(batch.shape[0]):
        for c in range(num_fg_classes):
            mask = batch[i] == c + 1
            if mask.any():
                out[i, :, :, c] = ndimage.label(mask, structure=structure)[0]
    return out[0] if single else out


def instances_to_channels(instances: np.ndarray, classes: np.ndarray,
                          num_fg_classes: int) -> np.ndarray:
    """Split a ground-truth instance map by class: channel ``c`` = ids where class == c + 1.

    Ids are kept as they are (not renumbered); pixels of class 0 are dropped.
    """
    inst = np.asarray(instances)
    batch, single = _as_batch(classes, num_fg_classes)
    inst_batch = inst[None] if inst.ndim == 2 else inst
    if inst_batch.shape != batch.shape:
        raise ValueError(f"instances {inst.shape} and classes {np.shape(classes)} differ in shape")
    if not np.issubdtype(inst_batch.dtype, np.integer):
        raise ValueError(f"instances must hold integer ids, got dtype {inst_batch.dtype}")
    out = np.zeros(batch.shape + (num_fg_classes,), dtype=np.int32)
    for c in range(num_fg_classes):
        np.copyto(out[..., c], inst_batch, where=batch == c + 1, casting="unsafe")
    return out[0] if single else out


def semantic_to_binary_channels(classes: np.ndarray, num_fg_classes: int) -> np.ndarray:
    """One-hot foreground channels (uint8): channel ``c`` = 1 where class == c + 1.

    This is the thesis "stuff-style" view (``pricon:segmentation/train.py`` L63-94,
    github.com/bwconrad/pricon): every class of an image is ONE segment, as in the reference
    code's one-hot argmax predictions and one-hot targets.
    """
    batch, single = _as_batch(classes, num_fg_classes)
    out = (batch[..., None] == np.arange(1, num_fg_classes + 1)).astype(np.uint8)
    return out[0] if single else out
