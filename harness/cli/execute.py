"""``harness run --executor NAME`` and the schedule ``--dry-run`` prints (the executor plugins are
in :mod:`harness.execute`; this module only connects them to the command line)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from harness.cli.common import out

if TYPE_CHECKING:
    from harness.execute.base import Executor
    from harness.plan import Plan
    from harness.runner import Runner

ExecutorOpt = Annotated[Optional[str], typer.Option(
    "--executor", help="where stages run: local (default), pool (one worker per GPU or CPU "
    "share), slurm (cluster jobs), or an installed executor plugin; overrides the spec's "
    "execution.executor (settings: --set execution.KEY=VALUE)")]
NprocOpt = Annotated[Optional[int], typer.Option(
    "--nproc", min=1, help="processes training each training stage together (DDP under "
    "torchrun, one node: one per GPU, or gloo on CPU), with any executor; overrides "
    "execution.gpus_per_stage")]


def pick(runner: Runner, name: str | None, nproc: int | None = None) -> Executor:
    """The executor (instance) of this run: ``--executor`` or the spec's ``execution:``;
    ``nproc`` replaces its ``gpus_per_stage``. Its slots are computed once here, so that a
    setting this machine cannot meet (more GPUs than visible) stops the run before any work."""
    from harness.execute.base import executor_config

    chosen, config = executor_config(runner.rspec.spec, runner.registry, name,
                                     runner.rspec.source, nproc=nproc)
    executor = runner.registry.create("executor", chosen, config)
    executor.slots(runner)
    return executor


CalibrateOpt = Annotated[bool, typer.Option(
    "--calibrate", help="with --dry-run: run each pending stage the store has no record of the "
    "same config for a few timed batches per loop, in a scratch folder (nothing is published), "
    "and estimate it from them; kept in the store for later dry runs")]
CalibrateStepsOpt = Annotated[int, typer.Option(
    "--calibrate-steps", min=1, max=10_000, help="timed batches per loop of a calibration run "
    "(after one untimed)")]


def device_name(runner: Runner) -> str:
    from harness.engine.runtime import describe_device, resolve_device
    from harness.execute.schedule import device_kind

    return device_kind(describe_device(resolve_device(runner.rspec.spec.finetune.device)))


def calibrate(runner: Runner, plan: Plan, steps: int) -> None:
    """Calibration runs of the pending stages without a same-config record on this device."""
    from harness.execute.calibrate import calibrate as run, to_calibrate
    from harness.execute.schedule import same_config_known

    device = device_name(runner)
    stages = to_calibrate(plan, runner.store, device, same_config_known(runner.store, plan, device))
    run(runner, stages, steps, device)


def show_schedule(runner: Runner, plan: Plan, executor: Executor) -> None:
    from harness.execute.schedule import fmt_seconds, schedule

    slots = executor.slots(runner)
    device = device_name(runner)
    plan_info = schedule(plan, runner.store, slots, device,
                         lambda stage: executor.processes(runner, stage))
    table = Table(title=f"schedule: executor {executor.name}, {len(slots)} at once "
                        f"({', '.join(slots[:4])}{', ...' if len(slots) > 4 else ''})")
    for col in ("wave", "stage", "label", "key", "where", "estimate", "basis"):
        table.add_column(col)
    for r in plan_info["rows"]:
        s = r["stage"]
        basis = r["basis"] + ("; resumes from a checkpoint" if r["resumes"] else "")
        where = executor.where(runner, s, r["where"])  # with a training stage's processes
        table.add_row(str(r["wave"]), s.kind, s.label, s.key[:12], where,
                      fmt_seconds(r["seconds"]), basis)
    out.print(table)
    unknown = plan_info["unknown"]
    note = (f" ({unknown} stage(s) without an estimate not counted; `--calibrate` times a few "
            f"steps of each)") if unknown else ""
    out.print(f"{len(plan_info['rows'])} stage(s) pending in "
              f"{len({r['wave'] for r in plan_info['rows']})} wave(s), {len(plan_info['done'])} "
              f"already in the store; estimated wall time on {device} with {executor.name}: "
              f"{fmt_seconds(plan_info['total_s'])} (one at a time: "
              f"{fmt_seconds(plan_info['serial_s'])}){note}", markup=False)
