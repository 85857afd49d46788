"""``harness stage run SPEC KEY``: compute one stage of a spec's plan in this process, exactly
as ``harness run`` computes it, and publish it in the store (what executors call). With
``--nproc N`` the command re-launches itself under torchrun (``torch.distributed.run``): N
processes train the stage with DDP (:mod:`harness.engine.distributed`); an interrupt (Ctrl-C,
SIGTERM) of this command reaches them as one SIGTERM (they checkpoint and stop), and a CPU-thread
budget in ``OMP_NUM_THREADS`` (a pool worker's, a SLURM job's) is split among them."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated

import typer

from harness.cli.common import SetOpt, StoreOpt, open_store
from harness.execute.torchrun import relaunch_under_torchrun

stage_app = typer.Typer(no_args_is_help=True, help="Run one stage of a spec's plan by its key.")


@stage_app.command("run")
def stage_run(spec: Annotated[Path, typer.Argument(help="spec file")],
              key: Annotated[str, typer.Argument(help="stage key, a unique prefix of it, or KIND/PREFIX (see `harness run SPEC --dry-run`)")],
              set_: SetOpt = None, store: StoreOpt = None,
              quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
              nproc: Annotated[int, typer.Option("--nproc", min=1, help="processes training this stage together (DDP under torchrun: one per GPU, or CPU processes with gloo); batch_size stays the global batch")] = 1) -> None:
    """Compute one stage of a spec's plan (its dependencies in the store) and publish it."""
    from harness.execute.in_process import compute_stage, stage_to_compute
    from harness.plugins import get_registry
    from harness.runner import Runner
    from harness.spec import load_spec

    registry = get_registry()
    rspec = load_spec(spec, set_ or [], registry)
    artifacts = open_store(store)
    runner = Runner(rspec, registry, artifacts, rspec.output_dir(), quiet=True if quiet else None)
    plan, _, _ = runner.plan(prepare=True)
    again = " ".join(["harness", "stage", "run", shlex.quote(str(spec)), "KEY",
                      *[f"--set {shlex.quote(o)}" for o in set_ or []],
                      *([f"--store {shlex.quote(str(store))}"] if store else [])])
    stage = stage_to_compute(runner, plan, key, spec, again)
    if stage is None:
        return
    if nproc > 1 and "LOCAL_RANK" not in os.environ:  # not yet under torchrun
        code = relaunch_under_torchrun(nproc)
        if code:
            raise typer.Exit(code)
        return
    compute_stage(runner, stage)
    if "LOCAL_RANK" in os.environ:  # a torchrun rank, its stage published: leave before teardown
        from harness.engine.distributed import leave

        leave(0)
