"""``harness stage run SPEC KEY``: compute one stage of a spec's plan in this process, exactly
as ``harness run`` computes it, and publish it in the store (what executors call). With
``--nproc N`` the command re-launches itself under torchrun (``torch.distributed.run``): N
processes train the stage with DDP (:mod:`harness.engine.distributed`); an interrupt (Ctrl-C,
SIGTERM) of this command reaches them as one SIGTERM (they checkpoint and stop), and a CPU-thread
budget in ``OMP_NUM_THREADS`` (a pool worker's, a SLURM job's) is split among them."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from harness.cli_common import SetOpt, StoreOpt, open_store, out

stage_app = typer.Typer(no_args_is_help=True, help="Run one stage of a spec's plan by its key.")


@stage_app.command("run")
def stage_run(spec: Annotated[Path, typer.Argument(help="spec file")],
              key: Annotated[str, typer.Argument(help="stage key, a unique prefix of it, or KIND/PREFIX (see `harness run SPEC --dry-run`)")],
              set_: SetOpt = None, store: StoreOpt = None,
              quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars")] = False,
              nproc: Annotated[int, typer.Option("--nproc", min=1, help="processes training this stage together (DDP under torchrun: one per GPU, or CPU processes with gloo); batch_size stays the global batch")] = 1) -> None:
    """Compute one stage of a spec's plan (its dependencies in the store) and publish it."""
    from harness.errors import DataError
    from harness.plugins import get_registry
    from harness.runner import Runner
    from harness.spec import load_spec

    rspec = load_spec(spec, set_ or [])
    artifacts = open_store(store)
    runner = Runner(rspec, get_registry(), artifacts, rspec.output_dir(), quiet=True if quiet else None)
    plan, _, _ = runner.plan(prepare=True)
    stage = _one_stage(plan, key, spec)
    name = f"{stage.kind}/{stage.key} ({stage.label})"
    under_torchrun = "LOCAL_RANK" in os.environ  # rank 0 decides for all (runner.run_stage)
    if artifacts.is_done(stage.kind, stage.key) and not under_torchrun:
        out.print(f"{name}: already done ({artifacts.stage_dir(stage.kind, stage.key)})", markup=False)
        return
    missing = [s for s in stage.upstream()[:-1] if not artifacts.is_done(s.kind, s.key)]
    if missing:
        again = " ".join(["harness", "stage", "run", shlex.quote(str(spec)), "KEY",
                          *[f"--set {shlex.quote(o)}" for o in set_ or []],
                          *([f"--store {shlex.quote(str(store))}"] if store else [])])
        raise DataError(f"{name}: {len(missing)} upstream stage(s) not in the store: "
                        f"{' '.join(f'{s.kind}/{s.key}' for s in missing)}; compute them in "
                        f"this order with `{again}` (or all with `harness run`)")
    if nproc > 1 and not under_torchrun:
        code = _torchrun(nproc)
        if code:
            raise typer.Exit(code)
        return
    runner.run_stage(stage)
    from harness.engine.distributed import rank

    if rank() > 0:
        return
    out.print(f"{name}: done ({artifacts.stage_dir(stage.kind, stage.key)})", markup=False)


def _one_stage(plan, key: str, spec: Path):
    from harness.errors import UsageError

    found = plan.find(key) if key else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise UsageError(f"KEY {key!r}: no stage of {spec}'s plan ({len(plan.stages())} stages) has "
                         f"a key starting with it; list them with `harness run {spec} --dry-run`")
    names = ", ".join(f"{s.kind}/{s.key[:12]}" for s in found[:4])
    raise UsageError(f"KEY {key!r}: {len(found)} stages match ({names}"
                     f"{', ...' if len(found) > 4 else ''}); give more of the key")


def _torchrun(nproc: int) -> int:
    """This command again, without ``--nproc``, in ``nproc`` processes under torchrun; its exit
    status (torchrun's: non-zero when any process failed; rerun to resume from the checkpoint)."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "harness.cli", *args]
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the budget of all N processes
        if env.get(name, "").isdigit():
            env[name] = str(max(1, int(env[name]) // nproc))
    # its own session: this process alone decides what torchrun is sent (one SIGTERM, which
    # torchrun passes to every rank), not a terminal's Ctrl-C to the whole group
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        return proc.wait()
    except BaseException:
        import signal

        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait()
        except BaseException:  # a second interrupt: stop now
            proc.kill()
            proc.wait()
        raise
