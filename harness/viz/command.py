"""``harness viz similarity``: read the inputs, compute one similarity map per (anchor,
encoder), draw the figure. Everything is checked before any encoder runs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from harness.errors import SpecError
from harness.viz import inputs
from harness.viz import similarity as sim


def encoder_maps(artifacts: Sequence[inputs.EncoderArtifact], image: np.ndarray,
                 points: Sequence[sim.Point], size: int | None, device=None) -> list[list[np.ndarray]]:
    """``maps[p][e]``: the similarity map of anchor ``points[p]`` under encoder ``artifacts[e]``
    for an ``(H, W, 3)`` uint8 image (one forward pass per encoder, in its own normalisation)."""
    import torch

    from harness.engine.runtime import resolve_device

    device = device or resolve_device("auto")
    shape = sim.input_shape(image.shape[:2], size)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div(255.0)
    per_encoder = []
    for artifact in artifacts:
        encoder, normalizer = inputs.load_encoder(artifact)
        features = sim.feature_map(encoder.to(device), normalizer(x.to(device))[0], shape)
        per_encoder.append([sim.cosine_map(features, p, image.shape[:2]) for p in points])
        del encoder, features
    return [list(row) for row in zip(*per_encoder)]


def similarity_command(encoders: Sequence[str], dataset, image_id: str, points_text: str,
                       size: int | None, output: Path | None, store_root: Path) -> Path:
    """Validate everything (points, encoders, image id, points inside the image), then draw;
    return the PNG path."""
    from harness.viz.plot import plot_similarity

    points = sim.parse_points(points_text)
    if size is not None and size < sim.STRIDE:
        raise SpecError(f"--size {size}: at least {sim.STRIDE} px (the encoder's output stride)")
    artifacts = [inputs.read_artifact(inputs.resolve_encoder(e, store_root)) for e in encoders]
    for a, label in zip(artifacts, inputs.unique_labels(artifacts)):
        a.label = label
    image, classes = inputs.load_sample(dataset, image_id)
    sim.check_points(points, image.shape[:2])
    maps = encoder_maps(artifacts, image, points, size)
    path = Path(output) if output else Path(f"similarity-{sim.safe_name(image_id)}.png")
    h, w = sim.input_shape(image.shape[:2], size)
    return plot_similarity(image, classes, list(dataset.class_names), points, maps,
                           [a.label for a in artifacts], path,
                           image_title=f"{dataset.name} {image_id} (encoder input {w}x{h})")
