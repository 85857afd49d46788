"""The point-similarity figure (matplotlib, Agg backend, PNG): one row per anchor point; the
image with its ground-truth classes as translucent colours (background not shown, as in the
thesis's figures), then one similarity map per encoder; the anchor is a star on every panel."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

DPI = 110
OVERLAY_ALPHA = 0.45
MAP_CMAP = "viridis"  # brighter = more similar
PANEL_INCHES = 2.6


def class_colour(class_id: int) -> tuple[float, float, float, float]:
    return to_rgba(f"C{(class_id - 1) % 10}")


def overlay(image: np.ndarray, classes: np.ndarray | None) -> np.ndarray:
    """``image`` (H, W, 3 uint8) with each foreground class blended in its colour."""
    out = image.astype(np.float32) / 255.0
    if classes is None:
        return out
    for cid in np.unique(classes):
        if cid == 0:
            continue
        mask = classes == cid
        out[mask] = (1 - OVERLAY_ALPHA) * out[mask] + OVERLAY_ALPHA * np.array(class_colour(int(cid))[:3])
    return out


def _star(ax, point) -> None:
    ax.plot([point[0]], [point[1]], marker="*", markersize=15, markerfacecolor="white",
            markeredgecolor="black", markeredgewidth=1.2, linestyle="none")


def plot_similarity(image: np.ndarray, classes: np.ndarray | None, class_names: Sequence[str],
                    points: Sequence[tuple[float, float]], maps: Sequence[Sequence[np.ndarray]],
                    titles: Sequence[str], path: Path, image_title: str = "image") -> Path:
    """Draw ``maps[p][e]`` (anchor ``points[p]``, encoder ``titles[e]``) beside the image; save a
    PNG at ``path`` and return it. Each map has its own colour scale (a bar beside it), from its
    minimum to 1, as similarity ranges differ widely between encoders."""
    rows, cols = len(points), 1 + len(titles)
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_INCHES * cols + 0.6 * len(titles),
                                                  PANEL_INCHES * rows + 0.6), squeeze=False)
    shown = overlay(image, classes)
    for r, point in enumerate(points):
        ax = axes[r][0]
        ax.imshow(shown, interpolation="nearest")
        label = f"anchor ({point[0]:g}, {point[1]:g})"
        if classes is not None:
            cid = int(classes[int(point[1]), int(point[0])])
            label += "\n" + (class_names[cid - 1] if 0 < cid <= len(class_names) else
                             "background" if cid == 0 else f"class {cid}")
        ax.set_ylabel(label, fontsize=8)
        for e, title in enumerate(titles):
            ax_m = axes[r][e + 1]
            sim = maps[r][e]
            im = ax_m.imshow(sim, cmap=MAP_CMAP, vmin=float(min(sim.min(), 0.999)), vmax=1.0,
                             interpolation="bilinear")
            fig.colorbar(im, ax=ax_m, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
            if r == 0:
                ax_m.set_title(title, fontsize=9)
        if r == 0:
            ax.set_title(image_title, fontsize=9)
        for a in axes[r]:
            _star(a, point)
            a.set_xticks([])
            a.set_yticks([])
    if classes is not None:
        present = [int(c) for c in np.unique(classes) if 0 < c <= len(class_names)]
        handles = [Patch(color=class_colour(c), alpha=0.8, label=class_names[c - 1]) for c in present]
        if handles:
            fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7,
                       frameon=False)
    fig.tight_layout(rect=(0, 0.06 if classes is not None else 0, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return path
