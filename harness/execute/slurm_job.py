"""The callable a SLURM job runs: ``harness stage run`` for one stage, as a subprocess.

It is a ``submitit.helpers.Checkpointable``: when SLURM warns of the time limit or of a
preemption (submitit's USR2), :meth:`StageJob.checkpoint` passes SIGTERM to the stage (the
training loop writes its checkpoint at the next step and stops) and returns the same job for
submitit to requeue; the requeued job runs the same command, which resumes from the stage's
checkpoint in the store. A job killed outright (``scontrol requeue``, a lost node) resumes
from the last time-based checkpoint when SLURM reruns it. submitit keeps this object in its
job folder (beside the run folder, not in the store); nothing in the store is a pickle.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import submitit


#: Exit codes of a stage stopped by a signal (the CLI's 130, or killed outright).
STOPPED = {130, -15, -9, 143, 137}


class StageJob(submitit.helpers.Checkpointable):
    def __init__(self, cmd: list[str], label: str, threads: int | None = None,
                 grace_s: float = 60.0):
        self.cmd, self.label, self.threads, self.grace_s = list(cmd), label, threads, grace_s
        self._proc: subprocess.Popen | None = None
        self._checkpointing = False

    def __call__(self) -> int:
        env = dict(os.environ)
        if self.threads:
            env.setdefault("OMP_NUM_THREADS", str(self.threads))
        # its own session: SLURM's and submitit's signals go to this process, which decides
        # what the stage gets (SIGTERM: checkpoint and stop; also before training, where it is a clean exit)
        self._proc = subprocess.Popen(self.cmd, env=env, start_new_session=True)
        rc = self._proc.wait()
        self._proc = None
        if rc in STOPPED and not self._checkpointing:
            # The scheduler stops the job (scancel, `scontrol requeue`, a preemption without
            # warning): the stage has checkpointed; wait for the kill instead of reporting a
            # result, so that a requeued job is not taken for a failed one.
            time.sleep(self.grace_s * 5)
        if rc != 0:
            raise RuntimeError(f"{self.label}: `harness stage run` exited {rc}")
        return rc

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        self._checkpointing = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            # Not proc.wait(): this runs in a signal handler that interrupted __call__'s
            # proc.wait(), which holds Popen's wait lock; waitpid here does not need it.
            deadline = time.time() + self.grace_s
            while time.time() < deadline:
                try:
                    if os.waitpid(proc.pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.2)
            else:
                proc.kill()
        return submitit.helpers.DelayedSubmission(StageJob(self.cmd, self.label, self.threads,
                                                           self.grace_s))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_proc": None, "_checkpointing": False}
