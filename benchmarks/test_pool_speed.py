"""Wall time of ``harness run`` with ``--executor pool`` (2 CPU workers, 1 thread each) against
``--executor local`` (1 thread) on a spec with 4 independent fine-tunes (an encoder, 4 fine-tunes,
4 evaluations), each on an empty store. Each pool worker starts once (Python + torch import,
plan build: 2.4 s measured) and runs every stage in a forked child: 0.07 s per stage against
3 s for a ``harness stage run`` process per stage (the design before; 2-core machine shared with
other jobs); it also imports the core's engine and metric modules before forking, which an
evaluation's child otherwise imported itself (~2.5 s each). On the quiet 2-core machine at the
default 40 epochs: 0.88 (local 58 s, pool 51 s); 1.08 with persistent workers before that
preload, 1.5 with a process per stage, and
2.62 at POOL_BENCH_EPOCHS=5 beside other jobs. Two workers cannot halve it here: the two full
fine-tunes take twice the frozen ones, so one worker idles at the end, and the driver's own
start and the records after the stages take ~8 s. On real stages (minutes to days) on free CPUs
or GPUs the ratio tends to 1/workers. Only a loose bound is asserted (the machine is shared):
the ratio is printed.

Run::

    .venv/bin/python -m pytest benchmarks/test_pool_speed.py -m benchmark -p no:cacheprovider -s
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from executor_specs import FOUR_FINETUNES, harness, records  # noqa: E402

#: Finetune epochs: long enough that the stages, not the process starts, take most of the time.
EPOCHS = int(os.environ.get("POOL_BENCH_EPOCHS", "40"))
MAX_RATIO = 1.5  # loose: 1.39 measured at 5 epochs under load; longer stages lower it


@pytest.mark.benchmark
def test_pool_of_two_against_local(tmp_path):
    spec = tmp_path / "four.yaml"
    spec.write_text(FOUR_FINETUNES.replace("epochs: 1", f"epochs: {EPOCHS}")
                    + "execution: {executor: pool, workers: 2, threads: 1}\n")
    seconds = {}
    for name in ("local", "pool"):
        started = time.perf_counter()
        proc = harness("run", str(spec), "--executor", name, "--output", str(tmp_path / name),
                       "--quiet", store=tmp_path / f"store_{name}", threads=1, timeout=3600)
        seconds[name] = time.perf_counter() - started
        assert proc.returncode == 0, proc.stderr
    ratio = seconds["pool"] / seconds["local"]
    print(f"\npool(2 workers)/local wall time: {ratio:.2f} "
          f"(local {seconds['local']:.0f} s, pool {seconds['pool']:.0f} s, {EPOCHS} epochs)")
    assert records(tmp_path / "local") == records(tmp_path / "pool")
    assert ratio < MAX_RATIO
