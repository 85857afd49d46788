"""Persistent ``pool`` workers: one process per slot starts once (with the slot's
``CUDA_VISIBLE_DEVICES`` / ``OMP_NUM_THREADS``, set before torch is imported), imports the
harness and torch and builds the driver's plan once, then runs many stages.

Protocol (JSON lines only, nothing that executes code): the driver writes
``{"key": "KIND/KEY", "log": PATH}`` to the worker's stdin; the worker forks a child that runs
that one stage exactly as ``harness stage run`` runs it (same checks, same exit codes, its
output appended to PATH) and answers ``{"key": K, "pid": PID}`` at the start and
``{"key": K, "rc": CODE}`` at the end (CODE as :class:`subprocess.Popen` gives it: negative for
a signal). A crash or kill of a child takes neither the worker nor the driver down.

Fork safety: a process that forks must have no thread but its main one (a child gets only the
forking thread; a pool's threads and locks are lost). The worker does not initialise CUDA nor
run torch's thread pools before forking, and it imports numpy/scipy with one BLAS thread
(``OPENBLAS_NUM_THREADS=1`` while it imports: OpenBLAS starts its pool, sized by that or
``OMP_NUM_THREADS``, when the library loads, so a budget over one thread used to leave the
worker multi-threaded, and every child of a GPU node's worker started afresh); each child then
sets its BLAS and torch threads to the slot's budget (threadpoolctl, ``torch.set_num_threads``),
what ``harness stage run`` with that budget has. The worker counts its threads once the plan
is built; if it finds more than one or CUDA initialised, each child execs a plain
``harness stage run`` instead (a fresh start). SIGTERM to the worker is forwarded to the
running child (its training loop checkpoints); the worker then ends quietly, even when the
driver has gone (a stage already published is in the store; the driver reads the store).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.plan import Plan
    from harness.runner import Runner

_child_pid = 0
_stopping = False


def _fork_safe() -> bool:
    import torch

    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    return threads == 1 and not torch.cuda.is_initialized()


#: BLAS threads the stages get (the slot's budget), saved while the worker imports with one.
_BLAS = {"OPENBLAS_NUM_THREADS": None}


def _one_blas_thread() -> None:
    """Until :func:`_restore_env`: numpy/scipy's OpenBLAS loads with one thread (no pool)."""
    _BLAS["OPENBLAS_NUM_THREADS"] = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"


def _restore_env() -> None:
    """The environment as the driver gave it (what an exec'd ``harness stage run`` inherits)."""
    value = _BLAS["OPENBLAS_NUM_THREADS"]
    if value is None:
        os.environ.pop("OPENBLAS_NUM_THREADS", None)
    else:
        os.environ["OPENBLAS_NUM_THREADS"] = value


def _budget(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _child_threads() -> None:
    """In a forked child: torch's and the BLAS libraries' threads as a fresh process with this
    environment would have them (OpenBLAS: ``OPENBLAS_NUM_THREADS``, else ``OMP_NUM_THREADS``)."""
    import torch

    omp = _budget("OMP_NUM_THREADS")
    if omp:
        torch.set_num_threads(omp)
    blas = _budget("OPENBLAS_NUM_THREADS") or omp
    if blas and blas > 1:
        from threadpoolctl import threadpool_limits

        threadpool_limits(blas, user_api="blas")


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


def _child(runner: Runner, plan: Plan, job: dict, proto: int, safe: bool, argv: list[str]) -> None:
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
        from harness.cli.app import _on_sigterm
        from harness.execute.in_process import compute_stage, stage_to_compute
        from harness.exit_codes import report_error

        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _child_threads()
        try:
            stage = stage_to_compute(runner, plan, job["key"], argv[0])
            if stage is not None:
                compute_stage(runner, stage)
            code = 0
        except BaseException as exc:  # noqa: BLE001 - mapped to the CLI's exit codes
            code = report_error(exc)
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
    _one_blas_thread()
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
    registry = get_registry()
    rspec = load_spec(Path(spec), sets, registry)
    runner = Runner(rspec, registry, ArtifactStore(store or os.environ.get(
        "HARNESS_STORE", "store")), rspec.output_dir(), quiet=True)
    plan, _, _ = runner.plan(prepare=True)
    _preload()
    _restore_env()
    safe = _fork_safe()
    print(f"pool worker {os.getpid()}: plan built; stages run in forked children"
          if safe else "pool worker: CUDA or threads already started: each stage starts afresh",
          file=sys.stderr, flush=True)
    send = _Answers(proto)
    send({"ready": True, "fork": safe})
    for line in sys.stdin:
        job = json.loads(line)
        if _stopping or send.gone:
            break
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(runner, plan, job, proto, safe, argv)
        _child_pid = pid
        send({"key": job["key"], "pid": pid})
        _, status = os.waitpid(pid, 0)  # the child publishes its stage before it exits
        _child_pid = 0
        send({"key": job["key"], "rc": os.waitstatus_to_exitcode(status)})
    send.close()
    return 0


class _Answers:
    """The worker's answers to the driver, one JSON line each. A driver that has gone (stopped
    or killed) closes the pipe: the answer is dropped, without the BrokenPipeError noise, since
    what a child computed is in the store, which is what a driver reads."""

    def __init__(self, fd: int):
        self.fh, self.gone = os.fdopen(fd, "w", buffering=1), False

    def __call__(self, message: dict) -> None:
        if self.gone:
            return
        try:
            self.fh.write(json.dumps(message) + "\n")
            self.fh.flush()
        except (BrokenPipeError, OSError, ValueError):
            self.gone = True

    def close(self) -> None:
        try:
            self.fh.close()
        except (BrokenPipeError, OSError, ValueError):
            pass


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
