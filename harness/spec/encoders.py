"""The encoder names the U-Net can be built with (``smp.encoders.get_encoder_names()``), without
importing segmentation_models_pytorch on every ``harness validate``.

Importing smp imports torch and timm (seconds), which is most of what validating a spec would
cost. The list depends only on the installed smp, so it is kept in the user cache folder under
smp's version: the first check after installing (or upgrading) smp imports it once and writes
the file; later ones read it. A process that has already imported smp asks it directly.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
from pathlib import Path

import platformdirs

from harness.name_cache import write_name_list

SMP_DIST = "segmentation-models-pytorch"


def cache_file() -> Path:
    try:
        version = md.version(SMP_DIST)
    except md.PackageNotFoundError:  # an unusual install (e.g. vendored): no cache name
        version = "unknown"
    return Path(platformdirs.user_cache_dir("harness")) / f"smp-{version}-encoders.json"


def encoder_names() -> list[str]:
    """Every encoder name smp lists, sorted."""
    path = cache_file()
    if "segmentation_models_pytorch" not in sys.modules and "unknown" not in path.name:
        try:
            names = json.loads(path.read_text())
            if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
                return names
        except (OSError, ValueError):
            pass  # missing or damaged: ask smp and write it again
    import segmentation_models_pytorch as smp

    names = sorted(smp.encoders.get_encoder_names())
    if "unknown" not in path.name:
        write_name_list(path, names)
        from harness.models.names import timm_names

        timm_names()  # smp imported timm: write timm's lists too (ViT names, harness.models.names)
    return names
