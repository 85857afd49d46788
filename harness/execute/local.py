"""The ``local`` executor plugin: every stage in this process, one after another (the default);
with ``gpus_per_stage: N`` (``--nproc N``) each training stage in N processes under torchrun
(:mod:`harness.execute.stage_process`), the others in this process.

Listing and validating load every executor plugin, so this module imports no torch: the
in-process machinery (:mod:`harness.execute.in_process`) is imported when a run starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.console import console
from harness.execute.base import Executor, StageOutcome
from harness.hookspecs import hookimpl

if TYPE_CHECKING:
    from harness.execute.base import RunView
    from harness.execute.stage_events import EventForwarder
    from harness.plan import Stage


class LocalExecutor(Executor):
    """The ``local`` executor plugin: every stage in this process, one after another."""

    name = "local"
    description = "every stage in this process, one at a time (the default)"

    def slots(self, runner: RunView) -> list[str]:
        if self.nproc > 1:
            self._gpus(runner)  # the check
        return ["this process"]

    def where(self, runner: RunView, stage: Stage, slot: str) -> str:
        n = self.processes(runner, stage)
        if n == 1:
            return slot
        gpus = self._gpus(runner)
        on = "GPUs " + ",".join(gpus[:n]) if gpus else "gloo, CPU"
        return f"{n} processes ({on})"

    def _gpus(self, runner: RunView) -> list[str]:
        from harness.execute.pool import visible_gpus
        from harness.execute.stage_process import check_gpus

        gpus = visible_gpus(runner.rspec.spec.finetune.device)
        check_gpus(self.nproc, gpus)
        return gpus

    def run(self, runner: RunView, stages: list[Stage], events: EventForwarder
            ) -> dict[str, StageOutcome]:
        from harness.execute.in_process import in_process
        from harness.execute.stage_process import StageProcesses

        here = in_process(runner, events.dispatch)
        apart = StageProcesses(runner, self.nproc) if self.nproc > 1 else None
        if apart is not None:
            self._gpus(runner)
        outcomes = {}
        for i, stage in enumerate(stages, 1):
            console.log(f"[{i}/{len(stages)}] {stage.kind} {stage.label}")
            if apart is not None and apart.wants(stage):
                outcomes[stage.key] = apart.compute(stage, events)
            else:
                outcomes[stage.key] = here.execute(stage)
        return outcomes


@hookimpl
def harness_register_executors():
    return [LocalExecutor]
