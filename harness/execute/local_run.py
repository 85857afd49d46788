"""The ``local`` executor plugin: every stage in this process, one after another (the default);
with ``gpus_per_stage: N`` (``--nproc N``) each training stage in N processes under torchrun
(:mod:`harness.execute.stage_process`), the others in this process.

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

    def slots(self, runner: Any) -> list[str]:
        if self.nproc > 1:
            self._gpus(runner)  # the check
        return ["this process"]

    def where(self, runner: Any, stage: Any, slot: str) -> str:
        n = self.processes(runner, stage)
        if n == 1:
            return slot
        gpus = self._gpus(runner)
        on = "GPUs " + ",".join(gpus[:n]) if gpus else "gloo, CPU"
        return f"{n} processes ({on})"

    def _gpus(self, runner: Any) -> list[str]:
        from harness.execute.pool import visible_gpus
        from harness.execute.stage_process import check_gpus

        gpus = visible_gpus(runner.rspec.spec.finetune.device)
        check_gpus(self.nproc, gpus)
        return gpus

    def run(self, runner: Any, plan: Any) -> Any:
        if self.nproc <= 1:
            return runner.run(plan)
        from harness.execute.stage_process import StageProcesses

        self._gpus(runner)
        return runner.run(plan, delegate=StageProcesses(runner, self.nproc))


@hookimpl
def harness_register_executors():
    return [LocalRun]
