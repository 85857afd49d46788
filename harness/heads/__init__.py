"""Dense heads: how a segmentation network's output channels are laid out and read.

``finetune.head`` picks one. Every architecture maps an image ``(B, 3, H, W)`` to logits
``(B, out_channels, H, W)`` at the input's size; the head decides ``out_channels``, the targets
and loss of fine-tuning, and how evaluation turns the logits into class and instance maps.

* ``semantic`` (default): ``num_classes`` logits (background + foreground classes); the
  prediction is their argmax and instances are its connected components
  (:mod:`harness.metrics.instances`).
* ``hover``: HoVer-Net's three outputs (Graham et al. 2019, "HoVer-Net: Simultaneous
  segmentation and classification of nuclei in multi-tissue histology images", Med. Image
  Anal. 58) from one shared decoder: nucleus probability (NP, 2 logits), horizontal and vertical
  distance maps (HV, 2 values) and nucleus class (NC, ``num_classes`` logits), in that order
  (:data:`HOVER_LAYOUT`); targets in :mod:`harness.heads.hover_targets`, losses in
  :mod:`harness.heads.hover_loss`, post-processing in :mod:`harness.heads.hover_post`.

One decoder serves all three ``hover`` outputs: the network is the architecture's own with
``out_channels`` wider, so every architecture and protocol (``linear``'s 1x1 head included) takes
the head unchanged. Measured on synthetic crowded nuclei at the same budget (tests/
test_hover_learning.py): bPQ well above ``semantic``'s, and a training step about as fast
(benchmarks/test_hover_step_time.py: x0.96 to x1.09 of semantic, one
thread, two runs). HoVer-Net and CellViT use three decoder
branches instead; that variant is not built or measured here.
"""

from __future__ import annotations

__all__ = ["HEADS", "HOVER_LAYOUT", "out_channels", "hover_slices"]

#: Head names a spec may give as ``finetune.head``.
HEADS = ("semantic", "hover")

#: ``hover``'s channel groups in output order: (name, channels; None = ``num_classes``).
HOVER_LAYOUT = (("np", 2), ("hv", 2), ("nc", None))


def out_channels(head: str, num_classes: int) -> int:
    """Output channels of a network under ``head`` for a dataset of ``num_classes`` classes
    (background included)."""
    if head == "semantic":
        return num_classes
    if head == "hover":
        return sum(n if n is not None else num_classes for _, n in HOVER_LAYOUT)
    raise ValueError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")


def hover_slices(num_classes: int) -> dict[str, slice]:
    """Channel slice of each ``hover`` output group (``np``, ``hv``, ``nc``)."""
    out, start = {}, 0
    for name, n in HOVER_LAYOUT:
        n = num_classes if n is None else n
        out[name] = slice(start, start + n)
        start += n
    return out
