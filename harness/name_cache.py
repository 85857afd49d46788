"""Where the torch-free name lists live (smp's encoders, timm's models), and how they are written.

``harness validate`` answers "is this an encoder name?" from these JSON lists instead of
importing segmentation-models-pytorch or timm (seconds each); :mod:`harness.spec.encoders` and
:mod:`harness.models.names` each keep one list, keyed by the library's version.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_name_list(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (a concurrent reader sees the old file or the new one);
    a read-only cache folder only costs the next check the import."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".names-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass
