"""``--executor pool``: the same records as ``local``; a failed stage stops its dependents only;
the dry run then estimates from the store's records. Real persistent worker processes (slow on 2 CPUs:
2 workers and 9 forked stages per run)."""

from __future__ import annotations


import pytest
from executor_specs import FOUR_FINETUNES, harness, processes_of, records, report, stage_count

pytestmark = pytest.mark.slow

POOL = "execution: {executor: pool, workers: 2, threads: 1}\n"


def test_pool_of_two_gives_the_records_of_local(tmp_path):
    """No ``execution.threads``: the pool's workers take the explicit ``OMP_NUM_THREADS=1``
    both runs are given (before, they divided the CPUs and computed other float sums)."""
    spec = tmp_path / "four.yaml"
    spec.write_text(FOUR_FINETUNES + POOL.replace(", threads: 1", ""))
    # local with the workers' thread count: float sums (and so the bits) depend on it
    local = harness("run", str(spec), "--executor", "local", "--output", str(tmp_path / "local"),
                    "--quiet", store=tmp_path / "s_local", threads=1)
    assert local.returncode == 0, local.stderr
    # the driver's thread count too: it is the device the records' provenance names
    pool = harness("run", str(spec), "--output", str(tmp_path / "pool"), "--quiet",
                   store=tmp_path / "s_pool", threads=1)
    assert pool.returncode == 0, pool.stderr
    assert "9 stages computed, 0 reused" in pool.stdout
    a, b = records(tmp_path / "local"), records(tmp_path / "pool")
    assert len(a) == 4 and a == b
    assert report(tmp_path / "pool") == report(tmp_path / "local")

    # the dry run of a variant now estimates every stage from those records
    dry = harness("run", str(spec), "--set", "finetune.lr=0.002", "--dry-run", store=tmp_path / "s_pool")
    assert dry.returncode == 0, dry.stderr
    assert "1 setting(s) differ" in dry.stdout and "no record" not in dry.stdout
    assert "8 stage(s) pending in 2 wave(s), 1 already in the store" in dry.stdout


def test_a_failed_stage_stops_only_its_dependents(tmp_path):
    """A fine-tune that cannot run (a file stands where its work folder goes) fails; the other
    three fine-tunes and their evaluations finish and stay in the store; one summary line names
    the stage and its log."""
    spec = tmp_path / "four.yaml"
    spec.write_text(FOUR_FINETUNES + POOL)
    store = tmp_path / "s"
    [stage] = [s for s in _plan(store, spec).stages()
               if s.kind == "finetune" and "full" in s.label and "fold2" in s.label]
    work = store / "work" / "finetune" / stage.key
    work.parent.mkdir(parents=True)
    work.write_text("not a folder")
    proc = harness("run", str(spec), "--output", str(tmp_path / "out"), "--quiet", store=store)
    assert proc.returncode not in (0, 130), (proc.stdout[-2000:], proc.stderr)
    assert "1 stage(s) failed, 1 not run because they need one; 7 computed" in proc.stderr
    assert f"{stage.label}: exit 1:" in proc.stderr and "FileExistsError" in proc.stderr
    assert f"not run: evaluate {stage.label}" in proc.stderr
    assert stage_count(store, "finetune") == 3 and stage_count(store, "evaluate") == 3
    assert not (tmp_path / "out" / "report.md").exists()


def _plan(store, spec):
    from harness.plugins import get_registry
    from harness.runner import Runner
    from harness.spec import load_spec
    from harness.store import ArtifactStore

    runner = Runner(load_spec(spec), get_registry(), ArtifactStore(store), store / "o")
    return runner.plan(prepare=True)[0]


def test_sigterm_reaches_the_workers_and_finished_stages_stay(tmp_path):
    """SIGTERM to the driver: each running worker checkpoints and stops, the driver exits 130,
    the encoder stays in the store and the fine-tunes keep their checkpoints for a rerun."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from support import REPO

    spec = tmp_path / "four.yaml"
    spec.write_text(FOUR_FINETUNES.replace("epochs: 1", "epochs: 400") + POOL)
    store = tmp_path / "s"
    env = {**os.environ, "HARNESS_STORE": str(store), "HARNESS_CHECKPOINT_EVERY_S": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(spec), "--store",
                               str(store), "--output", str(tmp_path / "out"), "--quiet"],
                              env=env, cwd=REPO, stdout=open(tmp_path / "driver.log", "w"),
                              stderr=subprocess.STDOUT)
    work = store / "work" / "finetune"
    deadline = time.time() + 600
    while time.time() < deadline and len(list(work.glob("*/checkpoint.pt")) if work.exists() else []) < 2:
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        time.sleep(0.5)
    driver.send_signal(signal.SIGTERM)
    driver.wait(timeout=300)
    assert driver.returncode == 130, (tmp_path / "driver.log").read_text()[-3000:]
    assert stage_count(store, "encoder") == 1 and stage_count(store, "finetune") == 0
    assert len(list(work.glob("*/checkpoint.pt"))) == 2
    logs = "".join(p.read_text() for p in (tmp_path / "out" / "logs").glob("finetune-*.log"))
    assert logs.count("SIGTERM: checkpoint") == 2, logs
    left = processes_of(spec)
    assert not left, left
