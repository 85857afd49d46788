"""Published numbers as data: the PRICon thesis tables (``thesis_results.yaml``), for "paper vs
measured" columns, and instance-segmentation figures of the literature (``literature.yaml``)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import yaml


@lru_cache(maxsize=1)
def load_thesis_results() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("thesis_results.yaml").read_text()
    return yaml.safe_load(text)


def published_value(table: str, method: str, protocol: str, fraction: float = 1.0) -> float | None:
    """The thesis's number for one (method, protocol[, fraction]) of a table with
    protocol columns, or None when the thesis reports none (e.g. a semi-supervised method's
    frozen column, or a table laid out as rows of ablations)."""
    data = load_thesis_results().get(table)
    if not isinstance(data, dict):
        return None
    if fraction != 1.0:
        block = data.get(f"{fraction:.2f}")
        if not isinstance(block, dict):
            return None
        data = block
    column = data.get(protocol)
    if not isinstance(column, dict):
        return None
    value = column.get(method)
    return float(value) if value is not None else None


def reference_metric(table: str) -> str | None:
    data = load_thesis_results().get(table)
    return data.get("metric") if isinstance(data, dict) else None


@lru_cache(maxsize=1)
def load_literature() -> dict[str, Any]:
    """Published instance-segmentation figures per dataset (``literature.yaml``)."""
    text = resources.files(__package__).joinpath("literature.yaml").read_text()
    return yaml.safe_load(text) or {}


def literature(dataset: str) -> dict[str, Any] | None:
    """``{"aggregation": ..., "systems": [...]}`` published for ``dataset``, or None."""
    entry = load_literature().get(dataset)
    return entry if isinstance(entry, dict) else None
