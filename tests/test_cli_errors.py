"""The command line's error contract, through real subprocesses: exit codes (2 invalid spec,
3 data/weights missing, 4 plugin missing), one line per problem on stderr, no traceback unless
``--debug``. Each call imports torch (a few seconds), so the scenarios are few and combined."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "specs" / "demo_full.yaml"  # the thesis-shaped plan (18 cells)

BAD_THREE = """\
name: bad
dataset: synthetic
methods: [scratch]
protocols: [froze]
finetune:
  epochs: 0
fractions: [1.5]
"""
BAD_METHOD = """\
name: bad2
dataset: synthetic
methods: [scrach]
"""
MISSING_PLUGIN = """\
name: needs_consep
dataset: consep
methods: [scratch]
"""
SUPERVISED = """\
name: sup
dataset:
  name: synthetic
  images_per_fold: 6
  unlabeled_images: 0
methods: [supervised]
protocols: [full]
folds: [fold1]
finetune:
  epochs: 1
  batch_size: 4
"""


def harness(*args: str, tmp_path: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HARNESS_STORE": str(tmp_path / "default_store"),
                "TORCH_HOME": str(tmp_path / "torch_home"), "COLUMNS": "250",
                "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=300, cwd=REPO)


def write(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def test_validate_reports_each_problem_of_each_file(tmp_path):
    bad = write(tmp_path, BAD_THREE, "bad.yaml")
    bad2 = write(tmp_path, BAD_METHOD, "bad2.yaml")
    proc = harness("validate", str(DEMO), str(bad), str(bad2), tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert f"{DEMO}: ok (18 cells)" in proc.stdout
    lines = error_lines(proc)
    assert len(lines) == 4, lines  # 3 problems in bad.yaml, 1 in bad2.yaml: one line each
    bad_lines = [line for line in lines if line.startswith(f"{bad}:")]
    assert len(bad_lines) == 3, lines
    assert any(line.startswith(f"{bad}:4: protocols.0:") and "did you mean 'frozen'?" in line
               for line in bad_lines)
    assert any(line.startswith(f"{bad}:6: finetune.epochs:") for line in bad_lines)
    assert any(line.startswith(f"{bad}:7: fractions:") for line in bad_lines)
    (bad2_line,) = [line for line in lines if line.startswith(f"{bad2}:")]
    assert bad2_line.startswith(f"{bad2}:3: methods.scrach:")
    assert "did you mean 'scratch'?" in bad2_line


def test_validate_debug_shows_traceback(tmp_path):
    bad = write(tmp_path, BAD_THREE, "bad.yaml")
    proc = harness("validate", str(bad), "--debug", tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" in proc.stderr
    assert "SpecError" in proc.stderr
    assert f"{bad}:6: finetune.epochs:" in proc.stderr


def test_validate_demo_ok_with_override(tmp_path):
    proc = harness("validate", str(DEMO), "--set", "finetune.epochs=3", "--set", "seeds=[0, 1]",
                   tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{DEMO}: ok (36 cells)"
    assert "Traceback" not in proc.stderr


def test_run_with_missing_dataset_plugin_exits_4_in_one_line(tmp_path):
    spec = write(tmp_path, MISSING_PLUGIN, "needs.yaml")
    proc = harness("run", str(spec), "--store", str(tmp_path / "store"), tmp_path=tmp_path)
    assert proc.returncode == 4, proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert "dataset plugin 'consep' is not installed" in lines[0]
    assert "synthetic" in lines[0]  # what is installed
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "store").exists()


def test_dry_run_demo_lists_cells_and_stages(tmp_path):
    """A dry run on a fresh store generates the (synthetic) data the plan needs, lists every
    cell and stage as 'to do', and runs no stage."""
    store = tmp_path / "store"
    out_dir = tmp_path / "out"
    proc = harness("run", str(DEMO), "--dry-run", "--store", str(store), "--output", str(out_dir),
                   tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    text = proc.stdout
    # 3 methods x 2 protocols x 3 folds; scratch encoder, SimCLR pretraining, PRICon random
    # labeler encoder + labeler + labeler_eval + pseudo-labels + pretraining, 18 x (finetune + evaluate)
    assert "18 cells, 43 distinct stages" in text
    for protocol in ("frozen", "full"):
        for fold in ("fold1", "fold2", "fold3"):
            assert f"scratch__{protocol}__frac1__{fold}__seed0" in text
    assert "encoder -> finetune -> evaluate" in text
    assert text.count("to do") == 43
    assert "0/3" in text and "done" in text
    # nothing ran: no stage in the store, no run folder
    assert not (store / "stages").exists() or not any((store / "stages").rglob("*"))
    assert not out_dir.exists()


def test_supervised_without_weights_exits_3_before_training(tmp_path):
    spec = write(tmp_path, SUPERVISED, "sup.yaml")
    torch_home = tmp_path / "empty_torch_home"
    torch_home.mkdir()
    store = tmp_path / "store"
    out_dir = tmp_path / "out"
    proc = harness("run", str(spec), "--store", str(store), "--output", str(out_dir),
                   tmp_path=tmp_path, env={"TORCH_HOME": str(torch_home)})
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("error: ")
    assert "resnet18-f37072fd.pth" in line
    assert str(torch_home / "hub" / "checkpoints") in line  # where to put it
    assert "methods.supervised.weights" in line  # the alternative
    # before any work: no stage, no data generated, no run folder
    assert not (store / "stages").exists()
    assert not (store / "datasets").exists()
    assert not out_dir.exists()
