"""Where a result came from: versions, commit, packages, device."""

from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import harness

PACKAGES = ("torch", "torchvision", "segmentation-models-pytorch", "timm", "numpy", "scipy",
            "pydantic", "pluggy", "torchmetrics")


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the harness source tree, when it is a git checkout (editable installs)."""
    here = Path(harness.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    versions = {}
    for name in PACKAGES + extra:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def provenance(device: str, plugins: dict[str, str]) -> dict[str, Any]:
    return {
        "harness_version": harness.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "plugins": plugins,
        "device": device,
    }
