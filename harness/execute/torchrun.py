"""Running this command again in N processes under torchrun (``harness stage run --nproc N``):
one stage over N processes (DDP), each process a ``harness stage run`` without ``--nproc``."""

from __future__ import annotations

import os
import subprocess
import sys


def relaunch_under_torchrun(nproc: int) -> int:
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
