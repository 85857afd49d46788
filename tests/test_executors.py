"""Executors: choosing one (``--executor``, ``execution:``), its settings' validation, the graph
walk and the ``--dry-run`` schedule. The runs themselves: test_executor_pool.py,
test_executor_submitit.py, test_slurm_cluster.py."""

from __future__ import annotations

from executor_specs import FOUR_FINETUNES, harness, one_cell

from harness.plugins import build_registry


def test_builtin_executors_are_registered_plugins():
    registry = build_registry()
    assert {"local", "pool", "slurm"} <= set(registry.executors)
    assert registry.executors["pool"].distribution == "pathbench-harness"


def test_unknown_executor_and_bad_settings_are_spec_errors(tmp_path):
    bad = one_cell(tmp_path, execution="execution: {executor: pool, workers: 0, colour: red}")
    proc = harness("validate", str(bad), store=tmp_path / "s")
    assert proc.returncode == 2, proc.stderr
    assert "execution.workers" in proc.stderr and "execution.colour: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr
    typo = one_cell(tmp_path, execution="execution: {executor: pol}", name="typo.yaml")
    proc = harness("validate", str(typo), store=tmp_path / "s")
    assert proc.returncode == 2 and "did you mean 'pool'" in proc.stderr, proc.stderr
    proc = harness("run", str(one_cell(tmp_path, name="ok.yaml")), "--executor", "nope",
                   "--dry-run", store=tmp_path / "s")
    assert proc.returncode == 4 and "executor plugin 'nope' is not installed" in proc.stderr


def test_settings_without_an_executor_belong_to_the_chosen_one(tmp_path):
    """``--set execution.workers=2`` with ``--executor pool``; the spec's pool settings are
    dropped when ``--executor local`` overrides it."""
    spec = one_cell(tmp_path)
    proc = harness("run", str(spec), "--executor", "pool", "--set", "execution.workers=3",
                   "--dry-run", store=tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    assert "executor pool, 3 at once" in proc.stdout
    pool_spec = one_cell(tmp_path, execution="execution: {executor: pool, workers: 2}", name="p.yaml")
    proc = harness("run", str(pool_spec), "--executor", "local", "--dry-run", store=tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    assert "executor local, 1 at once (this process)" in proc.stdout


def test_dry_run_schedule_shows_waves_and_slots(tmp_path):
    spec = tmp_path / "four.yaml"
    spec.write_text(FOUR_FINETUNES + "execution: {executor: pool, workers: 2, threads: 1}\n")
    proc = harness("run", str(spec), "--dry-run", store=tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if "│" in ln or "|" in ln]
    sched = [ln for ln in lines if "worker" in ln]
    # wave 0: the encoder; wave 1: 4 fine-tunes; wave 2: 4 evaluations, on 2 workers
    waves = [ln.split("│")[1].strip() for ln in sched]
    assert waves.count("0") == 1 and waves.count("1") == 4 and waves.count("2") == 4, sched
    assert any("worker 0 (1 threads)" in ln for ln in sched)
    assert any("worker 1 (1 threads)" in ln for ln in sched)
    assert "no record on cpu" in proc.stdout
    assert "9 stage(s) pending in 3 wave(s), 0 already in the store" in proc.stdout
