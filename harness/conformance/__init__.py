"""Conformance kit: check a method or dataset plugin against its contract and smoke-test it on
tiny data (``harness plugin check NAME...``, or from a plugin package's own tests)::

    from harness.conformance import check_plugin

    def test_conformance():
        check_plugin("my_method")        # AssertionError listing every failure

What is checked (each failure is one line: the plugin, the contract item, what is wrong and the
fix):

* every plugin: it loaded (no import error, no broken contract: :mod:`harness.contract`: a
  ``name``, a ``kind``, the contract methods of its kind, a ``Config`` whose defaults validate
  and that shadows no inherited setting unless it says so in ``overrides``);
* an ``init`` method sets an encoder's weights and returns the input normalisation;
* a ``pretrain`` method builds a model that keeps the encoder as ``.encoder``, and a few
  optimiser steps on one fixed batch of synthetic views (with masks if it needs them) give
  finite, falling losses and a gradient that reaches the encoder; ``after_step`` runs;
* a ``semisupervised`` method runs a few mean-teacher steps of the harness's own step;
* a dataset prepares from its fixture (generated datasets from their config; others from
  ``conformance_fixture``), verifies clean, notices a damaged cache, and loads samples of the
  documented dtypes and shapes.

A plugin supplies what the checks need with an optional classmethod
``conformance_fixture(folder: Path) -> dict``: ``{"config": {...}}`` (settings for the check:
tiny sizes, a weights file it wrote into ``folder``...) and, for a dataset,
``"source": PATH`` (a tiny download in the official layout, written into ``folder``).

Torch is imported only by the functions that run the smoke tests.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from harness.conformance.checker import Failure, Report, fixture_of

if TYPE_CHECKING:
    from harness.plugins import Registry

__all__ = ["Failure", "Report", "check", "check_plugin", "fixture_of"]


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from harness.plugins import get_registry

    return get_registry()


def check(name: str, registry: Registry | None = None, folder: Path | None = None,
          debug: bool = False) -> Report:
    """Every check of plugin ``name`` (a method or a dataset); ``debug``: print the traceback
    of each exception raised by plugin code to stderr."""
    from harness.contract import class_problems
    from harness.plugin_faults import describe

    registry = _registry(registry)
    report = Report(name, [], [], debug)
    broken = [b for b in registry.broken if name in (b.entry_point, b.name)]
    for b in broken:
        report.failures.append(Failure(f"plugin '{name}' (from {b.distribution})", "load", b.error))
    infos = [t[name] for t in (registry.methods, registry.datasets) if name in t]
    if not infos and not broken:
        from harness.errors import did_you_mean

        known = sorted({*registry.methods, *registry.datasets})
        report.failures.append(Failure(
            f"plugin '{name}'", "installed", f"no method or dataset of that name is installed"
            f"{did_you_mean(name, known)}; install its package (see `harness list`)"))
    for info in infos:
        who = describe(info)
        problems = class_problems(info.cls, info.category)
        report.failures += [Failure(who, "contract", p) for p in problems]
        if problems:
            continue
        report.passed.append("contract")
        with tempfile.TemporaryDirectory(prefix="harness-check-", dir=folder) as tmp:
            if info.category == "method":
                from harness.conformance.methods import smoke_method as smoke
            else:
                from harness.conformance.datasets import smoke_dataset as smoke
            smoke(info, Path(tmp), report, who, registry)
    return report


def check_plugin(*names: str, registry: Registry | None = None) -> list[Report]:
    """pytest helper: run :func:`check` on each name; raise AssertionError listing every
    failure (one line each)."""
    reports = [check(name, registry) for name in names]
    failures = [str(f) for r in reports for f in r.failures]
    if failures:
        raise AssertionError("plugin conformance failed:\n" + "\n".join(failures))
    return reports
