"""Every hook of the harness, in one place.

A plugin is a module (or object) named by an entry point in the ``harness`` group::

    [project.entry-points.harness]
    my_method = "my_package.my_method"

and implements any of the hooks below with :data:`hookimpl`::

    from harness.hookspecs import hookimpl

    @hookimpl
    def harness_register_methods():
        return [MyMethod]

Registration hooks return plugin *classes*; the harness instantiates them. Lifecycle hooks are
called during ``harness run`` so that a plugin can observe a run (loggers such as wandb,
mlflow or tensorboard attach here); each gets its typed event (:mod:`harness.events`) as
``event``, and until harness 0.2 the dict arguments beside it (deprecated: an implementation
that names one gets a ``DeprecationWarning`` when it is registered); their return values are
ignored, and an exception raised
in one stops the run, so observers should be defensive. Loggers registered through
``harness_register_loggers`` (:mod:`harness.loggers`) are called inside a guard instead: one that
fails warns once and is off for the rest of the run.

A hook implementation whose name matches no hook here (a misspelling, which pluggy would
silently never call) makes its plugin broken: ``harness list`` shows it as ``BROKEN`` with the
name it probably meant, and the plugin's other hooks are not used.
"""

from __future__ import annotations

from typing import Any

import pluggy

from harness.events import (CellFinished, MetricsLogged, RunFinished, RunStarted, StageFinished,
                            StageStarted)

PROJECT = "harness"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: The release that drops the lifecycle hooks' dict arguments (and the relay that builds each
#: call's event from them, :class:`harness.plugins.Hooks`): the callers then pass ``event`` only.
DICT_ARGUMENTS_END = "0.2"


def _retired(*names: str) -> dict[str, Warning]:
    """pluggy's per-argument deprecation for the dict arguments ``names`` of a lifecycle hook:
    an implementation that takes one is warned once, when its plugin is registered."""
    return {name: DeprecationWarning(
        f"the `{name}` argument of the harness's lifecycle hooks is deprecated and goes in "
        f"harness {DICT_ARGUMENTS_END}; take `event` (harness.events) instead") for name in names}


# --- registration -----------------------------------------------------------------------------

@hookspec
def harness_register_methods() -> list[type]:
    """Return method classes (subclasses of :class:`harness.methods.Method`)."""


@hookspec
def harness_register_datasets() -> list[type]:
    """Return dataset classes (subclasses of :class:`harness.data.base.Dataset`)."""


@hookspec
def harness_register_metric_families() -> list[type]:
    """Return metric-family classes (subclasses of :class:`harness.metrics.family.MetricFamily`):
    how the test predictions of a dataset whose ``metric_family`` is the class's ``name`` are
    scored, which headline metrics and variants a spec may name, and what a published table's
    metric means in them."""


# --- lifecycle (observers) -------------------------------------------------------------------
# Each lifecycle hook receives ``event``, the call as a typed, documented dataclass of
# :mod:`harness.events` (``event.to_dict()`` is JSON-serialisable). The dict arguments beside it
# are deprecated until harness 0.2 (``warn_on_impl_args``): take ``event``.

@hookspec(warn_on_impl_args=_retired("run"))
def harness_run_started(run: dict[str, Any], event: RunStarted) -> None:
    """A run begins. ``run`` holds ``name``, ``spec`` (resolved, as a dict), ``overrides``,
    ``output_dir``, ``store`` and ``cells`` (the number of cells); ``event``:
    :class:`~harness.events.RunStarted`."""


@hookspec(warn_on_impl_args=_retired("stage"))
def harness_stage_started(stage: dict[str, Any], event: StageStarted) -> None:
    """A stage starts computing (wherever it runs; a stage reused from the store does not
    start). ``stage`` holds ``kind``, ``key`` and ``label``; ``event``:
    :class:`~harness.events.StageStarted`."""


@hookspec(warn_on_impl_args=_retired("stage"))
def harness_stage_finished(stage: dict[str, Any], event: StageFinished) -> None:
    """A stage finished. ``stage`` holds ``kind``, ``key``, ``label``, ``cached`` (True when it
    was reused from the store rather than computed), ``path``, ``seconds`` and ``result`` (the
    kind's summary); ``event``: :class:`~harness.events.StageFinished`."""


@hookspec(warn_on_impl_args=_retired("stage", "step", "metrics"))
def harness_metrics_logged(stage: dict[str, Any], step: int, metrics: dict[str, float],
                           event: MetricsLogged) -> None:
    """Training metrics of a running stage (``kind``, ``key``, ``label``) at ``step`` (global
    iteration); called at least once per epoch. ``event``: :class:`~harness.events.MetricsLogged`."""


@hookspec(warn_on_impl_args=_retired("cell", "record"))
def harness_cell_finished(cell: dict[str, Any], record: dict[str, Any], event: CellFinished) -> None:
    """One cell (method x protocol x fraction x fold x seed) has its result ``record``;
    ``event``: :class:`~harness.events.CellFinished`."""


@hookspec(warn_on_impl_args=_retired("run", "records"))
def harness_run_finished(run: dict[str, Any], records: list[dict[str, Any]],
                         event: RunFinished) -> None:
    """All cells are done; ``records`` are the result records of the run; ``event``:
    :class:`~harness.events.RunFinished`."""


# --- registration: stage kinds and protocols --------------------------------------------------

@hookspec
def harness_register_stage_kinds() -> list[type]:
    """Return stage-kind classes (subclasses of :class:`harness.stages.base.StageKind`), each
    named by its ``kind``; a plan's stages name their kind and are run by it."""


@hookspec
def harness_register_protocols() -> list[type]:
    """Return protocol classes (subclasses of :class:`harness.protocols.base.TrainingProtocol`):
    how a cell turns an encoder into an evaluated model; a spec's ``protocols:`` names them."""


@hookspec
def harness_register_foundation_models() -> list[dict]:
    """Return foundation-model entries (mappings, fields of
    :class:`harness.models.foundation.FoundationModel`: name, timm architecture and kwargs, patch
    size, width, normalisation, where to get the weights and under what terms), usually read
    from a YAML data file of the plugin; ``finetune.encoder: fm:NAME`` and the ``foundation``
    init method's ``model: NAME`` name them."""


@hookspec
def harness_register_loggers() -> list[type]:
    """Return logger classes (subclasses of :class:`harness.loggers.Logger`), each named by its
    ``name``: observers that record a run in an experiment tracker. A run uses the ones its
    spec's ``loggers:`` or ``harness run --logger NAME`` enables; they see the lifecycle events
    above through a guard, so a logger that fails warns once and never stops the run."""


@hookspec
def harness_register_executors() -> list[type]:
    """Return executor classes (subclasses of :class:`harness.execute.base.Executor`): how a
    run's stages get computed (in process, a pool of local workers, cluster jobs...); chosen
    with ``harness run --executor NAME`` or the spec's ``execution: {executor: NAME, ...}``."""
