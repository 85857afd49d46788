"""The ``local`` executor's training stages over several processes (``gpus_per_stage: N`` or
``harness run --nproc N``): each training stage runs as a ``harness stage run --nproc N``
subprocess (torchrun inside), the other stages in the driver as with one process, in the same
order, so the run's records and report are those of a one-process run.

The subprocess has its own session: Ctrl-C or SIGTERM reaches the driver alone, which sends the
stage one SIGTERM (torchrun passes it to every process; the training loop checkpoints and
stops), waits up to ``grace_s`` for it and exits 130; a rerun resumes from the checkpoint. Its
output goes to ``<run folder>/logs/KIND-KEY.log`` and to this process's stderr. No torch here
(the ``local`` plugin module imports this one).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.console import console
from harness.errors import SpecError, StagesFailed
from harness.execute.base import shown, stage_command, stage_processes

if TYPE_CHECKING:
    from harness.execute.base import RunView
    from harness.execute.stage_events import EventForwarder
    from harness.plan import Stage


def check_gpus(nproc: int, gpus: list[str]) -> None:
    """A one-line spec error when a stage's ``nproc`` processes would share GPUs."""
    if nproc > 1 and gpus and nproc > len(gpus):
        raise SpecError(f"execution.gpus_per_stage: {nproc} processes per training stage, but "
                        f"{len(gpus)} GPU(s) visible ({','.join(gpus)}); use at most {len(gpus)} "
                        f"(or --nproc {len(gpus)}), or finetune.device: cpu for gloo processes")


def thread_env(nproc: int) -> dict[str, str]:
    """The stage's CPU-thread budget: this process's (``OMP_NUM_THREADS``, else every CPU);
    ``harness stage run --nproc`` splits it among its processes."""
    budget = os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count() or 1)
    return {"OMP_NUM_THREADS": budget, "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", budget)}


class StageProcesses:
    """The ``local`` executor's training stages in ``nproc`` processes (:meth:`wants` says
    which stages); their events forwarded as they arrive."""

    def __init__(self, runner: RunView, nproc: int, grace_s: float = 120.0):
        self.runner, self.nproc, self.grace_s = runner, nproc, grace_s

    def wants(self, stage: Stage) -> bool:
        return stage_processes(self.runner, stage, self.nproc) > 1

    def compute(self, stage: Stage, events: EventForwarder) -> Any:
        """Run ``stage`` as ``harness stage run --nproc N``; its outcome, read from the store."""
        from harness.execute.base import outcomes_from_store

        n = stage_processes(self.runner, stage, self.nproc)
        cmd = stage_command(self.runner, stage, nproc=n)
        logs = Path(self.runner.output_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{stage.kind}-{stage.key[:12]}.log"
        console.log(f"  start {stage.kind} {stage.label} in {n} processes (log: {log})")
        events.watch(stage)
        try:
            rc = run_logged(cmd, log, {**os.environ, **thread_env(n)}, self.grace_s, events.poll)
        finally:
            events.done(stage)
        if rc != 0 or not self.runner.store.is_done(stage.kind, stage.key):
            why = f"exit {rc}: {error_line(log)}" if rc else "finished without publishing its result"
            raise StagesFailed(f"{stage.label}: {why} (log: {log})", [rc or 1])
        return outcomes_from_store(self.runner.store, [stage], [stage.key])[stage.key]


def error_line(log: Path) -> str:
    """The stage's own ``error: ...`` line (a rank's; torchrun's failure banner comes after
    it), else the log's last line."""
    from harness.execute.pool_launch import last_line

    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [ln.strip() for ln in lines if ln.startswith("error: ")]
    return errors[-1][:300] if errors else last_line(log)


def run_logged(cmd: list[str], log: Path, env: dict[str, str], grace_s: float,
               tick: Any = None, every_s: float = 0.5) -> int:
    """Run ``cmd`` in its own session, its output appended to ``log`` and copied to stderr,
    calling ``tick()`` every ``every_s`` while it runs; on an interrupt, SIGTERM to it, up to
    ``grace_s`` to stop (then SIGKILL), and the interrupt raised again. Its exit status."""
    with open(log, "ab") as fh:
        fh.write(f"$ {shown(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        tee = threading.Thread(target=_copy, args=(proc.stdout, fh), daemon=True)
        tee.start()
        try:
            while True:
                try:
                    rc = proc.wait(timeout=every_s)
                    break
                except subprocess.TimeoutExpired:
                    if tick is not None:
                        tick()
        except BaseException:
            _stop(proc, grace_s)
            tee.join(timeout=5)
            raise
        tee.join()
        return rc


def _copy(pipe: Any, fh: Any) -> None:
    for line in iter(pipe.readline, b""):
        fh.write(line)
        fh.flush()
        try:
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except BaseException:  # the time is up, or a second interrupt: stop it now
        proc.kill()
        proc.wait()
