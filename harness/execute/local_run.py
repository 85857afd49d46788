"""The ``local`` executor plugin: every stage in this process, one after another (the default).

A module of its own so that listing and validating (which load every executor plugin) import
no torch: the in-process machinery is :mod:`harness.execute.local`, imported by the runner."""

from __future__ import annotations

from typing import Any

from harness.execute.base import Executor
from harness.hookspecs import hookimpl


class LocalRun(Executor):
    """The ``local`` executor plugin: every stage in this process, one after another."""

    name = "local"
    description = "every stage in this process, one at a time (the default)"

    def run(self, runner: Any, plan: Any) -> Any:
        return runner.run(plan)


@hookimpl
def harness_register_executors():
    return [LocalRun]
