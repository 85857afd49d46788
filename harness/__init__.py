"""Benchmark harness for pretraining methods in computational pathology.

The core never names a specific method or dataset: those are plugins found through the
``harness`` entry-point group (see :mod:`harness.hookspecs`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pathbench-harness")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
