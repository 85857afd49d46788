"""Persistent ``pool`` workers: one process per slot starts once (with the slot's
``CUDA_VISIBLE_DEVICES`` / ``OMP_NUM_THREADS``, set before torch is imported), imports the
harness and torch and builds the driver's plan once, then runs many stages.

Protocol (JSON lines only, nothing that executes code): the driver writes
``{"key": "KIND/KEY", "log": PATH}`` to the worker's stdin; the worker forks a child that runs
that one stage exactly as ``harness stage run`` runs it (same checks, same exit codes, its
output appended to PATH) and answers ``{"key": K, "pid": PID}`` at the start and
``{"key": K, "rc": CODE}`` at the end (CODE as :class:`subprocess.Popen` gives it: negative for
a signal). A crash or kill of a child takes neither the worker nor the driver down.

Fork safety: the worker does not initialise CUDA nor run torch's thread pools before forking
(it counts its threads once the plan is built); if it finds either, each child execs a plain
``harness stage run`` instead (a fresh start, as before). SIGTERM to the worker is forwarded to
the running child (its training loop checkpoints).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

_child_pid = 0
_stopping = False


def _fork_safe() -> bool:
    import torch

    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    return threads == 1 and not torch.cuda.is_initialized()


def pin_cpus() -> None:
    """Run on the CPUs the pool gave this worker (``HARNESS_POOL_CPUS``, see
    :func:`harness.execute.pool.worker_slots`); its stages and their loader workers inherit
    them. Nothing where the platform has no affinity or the CPUs are gone."""
    cpus = os.environ.get("HARNESS_POOL_CPUS", "")
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
        except (OSError, ValueError):  # a CPU taken offline or out of this cgroup meanwhile
            pass


def _exit_code(exc: BaseException) -> int:
    """The exit code and ``error:`` line ``harness stage run`` gives for ``exc`` (harness.cli)."""
    from harness.cli_common import err
    from harness.errors import HarnessError, SpecError
    from harness.plugin_faults import plugin_fault
    from harness.spec_checks import printable

    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else 1
    if isinstance(exc, HarnessError):
        src = f"{exc.source}: " if isinstance(exc, SpecError) and exc.source else ""
        for line in getattr(exc, "problems", None) or [str(exc)]:
            err.print(printable(f"error: {src}{line}"), markup=False)
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        err.print("interrupted: finished stages are kept and the running one resumes from its "
                  "last checkpoint; rerun the same command to continue", markup=False)
        return 130
    if (fault := plugin_fault(exc)) is not None:
        err.print(printable(f"error: {fault}"), markup=False)
        return fault.exit_code
    err.print(printable(f"error: unexpected {type(exc).__name__}: {exc} (a bug; please report "
                        f"it with the output of --debug)"), markup=False)
    return 1


def _run_one(runner: Any, plan: Any, key: str) -> None:
    """``harness stage run``'s body, on the worker's plan."""
    from harness.cli_common import out
    from harness.errors import DataError, UsageError

    found = plan.find(key)
    if len(found) != 1:
        raise UsageError(f"KEY {key!r}: {len(found)} stages of the plan match")
    stage, store = found[0], runner.store
    name = f"{stage.kind}/{stage.key} ({stage.label})"
    if store.is_done(stage.kind, stage.key):
        out.print(f"{name}: already done ({store.stage_dir(stage.kind, stage.key)})", markup=False)
        return
    missing = [s for s in stage.upstream()[:-1] if not store.is_done(s.kind, s.key)]
    if missing:
        raise DataError(f"{name}: {len(missing)} upstream stage(s) not in the store: "
                        f"{' '.join(f'{s.kind}/{s.key}' for s in missing)}")
    runner.run_stage(stage)
    out.print(f"{name}: done ({store.stage_dir(stage.kind, stage.key)})", markup=False)


def _child(runner: Any, plan: Any, job: dict, proto: int, safe: bool, argv: list[str]) -> None:
    """In the forked child: the stage, its output to its log, then ``os._exit``."""
    code = 1
    try:
        os.close(proto)
        fd = os.open(job["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        nproc = int(job.get("nproc", 1))
        if not safe or nproc > 1:
            # CUDA or thread pools live in the worker, or the stage trains on N processes under
            # torchrun (gpus_per_stage): a fresh `harness stage run` instead
            os.execv(sys.executable, [sys.executable, "-m", "harness.cli", "stage", "run",
                                      *argv[:1], job["key"], *argv[1:], "--quiet",
                                      *(["--nproc", str(nproc)] if nproc > 1 else [])])
        from harness.cli import _on_sigterm

        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import torch

        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        try:
            _run_one(runner, plan, job["key"])
            code = 0
        except BaseException as exc:  # noqa: BLE001 - mapped to the CLI's exit codes
            code = _exit_code(exc)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _forward(signum: int, frame: Any) -> None:  # noqa: ARG001
    global _stopping
    _stopping = True  # no further stage starts
    if _child_pid:
        try:
            os.kill(_child_pid, signum)
        except ProcessLookupError:
            pass


#: The core's packages whose modules stages import lazily (engine: torch, timm, smp; metrics:
#: scipy): imported once in the worker, not in every forked child (measured: an evaluation of
#: 8 tiny images took 3 s in a child without this, 0.3 s in one process).
PRELOAD = ("harness.engine", "harness.metrics", "harness.stages", "harness.protocols")


def _preload() -> None:
    import importlib
    import pkgutil

    for name in PRELOAD:
        package = importlib.import_module(name)
        for info in pkgutil.iter_modules(package.__path__, f"{name}."):
            try:
                importlib.import_module(info.name)
            except ImportError:  # an optional extra that is not installed
                pass


def worker_main(argv: list[str]) -> int:
    """``python -m harness.execute.pool_worker SPEC [--store S] [--set O]...``."""
    global _child_pid
    pin_cpus()  # before torch starts any thread
    proto = os.dup(1)  # the protocol's own fd: nothing the harness prints can reach it
    os.dup2(2, 1)
    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver alone decides (its own session)
    from harness.plugins import get_registry
    from harness.runner import Runner
    from harness.spec import load_spec
    from harness.store import ArtifactStore

    spec, store, sets = argv[0], None, []
    for flag, value in zip(argv[1::2], argv[2::2]):
        if flag == "--store":
            store = value
        elif flag == "--set":
            sets.append(value)
    rspec = load_spec(Path(spec), sets)
    runner = Runner(rspec, get_registry(), ArtifactStore(store or os.environ.get(
        "HARNESS_STORE", "store")), rspec.output_dir(), quiet=True)
    plan, _, _ = runner.plan(prepare=True)
    _preload()
    safe = _fork_safe()
    print(f"pool worker {os.getpid()}: plan built; stages run in forked children"
          if safe else "pool worker: CUDA or threads already started: each stage starts afresh",
          file=sys.stderr, flush=True)
    send = os.fdopen(proto, "w", buffering=1)
    send.write(json.dumps({"ready": True, "fork": safe}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        if _stopping:
            break
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(runner, plan, job, proto, safe, argv)
        _child_pid = pid
        send.write(json.dumps({"key": job["key"], "pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        _child_pid = 0
        send.write(json.dumps({"key": job["key"], "rc": os.waitstatus_to_exitcode(status)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
