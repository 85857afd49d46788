"""The metric-family contract: how a dataset's test predictions are scored and read back.

A dataset names its family (``Dataset.metric_family = "pq"``); a plugin registers the family's
class through the ``harness_register_metric_families`` hook, as the built-in ``pq`` and ``dice``
families do (``plugins/metrics/``). Everything the harness does with metrics asks the family:

* the evaluate stage feeds the predictions to :meth:`MetricFamily.scorer` batch by batch (by
  default collected and given to :meth:`MetricFamily.compute` at the end) and writes the
  resulting dict as ``metrics.json``;
* validation checks a spec's ``metric.name`` against :attr:`~MetricFamily.metric_names` and its
  ``metric.pq_variant`` against :attr:`~MetricFamily.variants`;
* records and reports read a headline value with :meth:`MetricFamily.headline`, and compare with
  a published table like for like through :attr:`~MetricFamily.like_for_like`.

The evaluate stage's key holds the family's name (``metric_family``), not its code, so stored
results stay valid across releases; a family whose values change should take a new name.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np


class MetricFamily:
    """A family of metrics computed together on a test fold (e.g. mPQ and bPQ)."""

    #: The value of ``Dataset.metric_family`` that selects this family.
    name: ClassVar[str]
    #: Headline metrics a spec may name (``metric.name``), the first being the default.
    metric_names: ClassVar[tuple[str, ...]]
    #: Variants that are all recorded and one of which a spec picks (``metric.pq_variant``);
    #: empty when the family has none.
    variants: ClassVar[tuple[str, ...]] = ()
    #: Metric names of published tables (``harness/references``) -> the ``(metric, variant)`` of
    #: ours that means the same thing, for the report's paper column.
    like_for_like: ClassVar[dict[str, tuple[str, str | None]]] = {}
    description: ClassVar[str] = ""
    #: How a test fold's value is averaged (stated in reports), e.g. per image then per tissue.
    aggregation: ClassVar[str] = ""

    @property
    def default_metric(self) -> str:
        return self.metric_names[0]

    def compute(self, pred: np.ndarray, arrays: Any, rows: np.ndarray,
                class_names: Sequence[str]) -> dict[str, Any]:
        """The metrics (JSON-serialisable) of argmax class maps ``pred`` (uint8 ``(N, H, W)``)
        against the ground truth of ``arrays`` (a :class:`~harness.data.base.LabeledArrays`) at
        ``rows``; ``class_names`` are the foreground classes (class id ``i + 1``)."""
        raise NotImplementedError

    def scorer(self, arrays: Any, rows: np.ndarray, class_names: Sequence[str],
               workers: int) -> "BufferedScorer":
        """An object that receives the predictions of ``rows`` in order, a batch at a time
        (``add(pred)``), and returns :meth:`compute`'s dict from ``finish()``; ``close()`` frees
        it after a failure. The default collects the batches and calls :meth:`compute` at the
        end; a family whose images score independently may score batches as they come, in up to
        ``workers`` processes (:class:`harness.metrics.stream.StreamingScorer`)."""
        return BufferedScorer(self, arrays, rows, class_names)

    def headline(self, metrics: dict[str, Any], name: str, variant: str | None) -> float | None:
        """The value of metric ``name`` (of ``variant``, for a family with variants) in a dict
        that :meth:`compute` returned; KeyError if it holds none."""
        raise NotImplementedError

    def variant_of(self, variant: str | None) -> str | None:
        """The variant a record names for a spec's ``metric.pq_variant``: None without variants."""
        return variant if self.variants else None


class BufferedScorer:
    """:meth:`MetricFamily.scorer`'s default: everything scored by ``compute`` at the end."""

    def __init__(self, family: MetricFamily, arrays: Any, rows: np.ndarray,
                 class_names: Sequence[str]):
        self._family, self._arrays, self._rows, self._names = family, arrays, rows, class_names
        self._parts: list[np.ndarray] = []

    def add(self, pred: np.ndarray) -> None:
        self._parts.append(pred)

    def finish(self) -> dict[str, Any]:
        pred = (np.concatenate(self._parts) if self._parts
                else np.zeros((0,) + tuple(self._arrays.classes.shape[1:]), np.uint8))
        return self._family.compute(pred, self._arrays, self._rows, self._names)

    def close(self) -> None:
        self._parts = []
