"""Output for CI logs and pipes (issue 12 item 7): ``harness list`` readable without a terminal,
``--json`` on ``list``, ``validate`` and ``run --dry-run``, the documented exit codes, and
``--set`` problems that name the ``--set``. Through real subprocesses (stdout a pipe, or a
pseudo-terminal) where the output's form is the point; in process where only the words are."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import SpecError
from harness.plugins import get_registry
from harness.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "specs" / "demo_full.yaml"  # the thesis-shaped plan (18 cells)
TINY = ["--set", "dataset.images_per_fold=8", "--set", "dataset.unlabeled_images=0",
        "--set", "folds=[fold1]", "--set", "methods=[scratch, simclr]"]


def harness(*args: str, tmp_path: Path, columns: int = 40, site: Path | None = None
            ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"HARNESS_STORE": str(tmp_path / "store"), "COLUMNS": str(columns),
                "NO_COLOR": "1"})
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)


def in_terminal(*args: str, columns: int, tmp_path: Path) -> str:
    """stdout of the command on a pseudo-terminal ``columns`` wide."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "xterm",
           "HARNESS_STORE": str(tmp_path / "store")}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], stdout=slave,
                            stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=300) == 0
    return b"".join(chunks).decode()


def expected_plugins() -> dict[str, set[str]]:
    """Plugin name -> the descriptions of the plugins of that name (one name may be a protocol,
    its stage kind and its metric family, e.g. ``probe``)."""
    registry = get_registry()
    tables = (registry.methods, registry.datasets, registry.protocols, registry.metric_families,
              registry.stage_kinds, registry.executors, registry.loggers)
    out: dict[str, set[str]] = {}
    for table in tables:
        for name, info in table.items():
            out.setdefault(name, set()).add(" ".join((info.cls.description or "").split()))
    return out


# --- harness list ------------------------------------------------------------------------------

def test_list_in_a_pipe_is_one_plain_line_per_plugin(tmp_path):
    """A narrow COLUMNS and a pipe (a CI log): a header and one line per plugin, every
    description whole, no table borders."""
    proc = harness("list", tmp_path=tmp_path, columns=40)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["name", "type", "kind", "distribution", "version", "description"]
    plugins = expected_plugins()
    assert len(lines) == 1 + sum(len(d) for d in plugins.values()), proc.stdout
    for line in lines[1:]:
        name = line.split()[0]
        assert any(line.endswith(d) for d in plugins[name]), (line, plugins[name])
        assert "│" not in line and "…" not in line


def test_list_in_a_narrow_terminal_is_not_cut(tmp_path):
    text = in_terminal("list", "methods", columns=60, tmp_path=tmp_path)
    flat = " ".join(text.split())
    registry = get_registry()
    for name, info in registry.methods.items():
        assert info.cls.description in flat, (name, text)
    wide = in_terminal("list", "methods", columns=220, tmp_path=tmp_path)
    assert "┃" in wide or "│" in wide  # a terminal wide enough gets the table


def test_list_json(tmp_path):
    proc = harness("list", "datasets", "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == {"plugins", "broken", "conflicts"}
    assert doc["broken"] == [] and doc["conflicts"] == []
    synthetic = next(p for p in doc["plugins"] if p["name"] == "synthetic")
    assert synthetic["type"] == "dataset" and synthetic["kind"] == "labeled"
    assert synthetic["distribution"] == "pathbench-harness"
    assert {p["type"] for p in doc["plugins"]} == {"dataset"}


def test_list_shows_every_extension_point(tmp_path):
    """Text and --json: methods, datasets, protocols, metric families, stage kinds, executors
    and loggers, each with its distribution; `list WHAT` narrows to one."""
    proc = harness("list", "--json", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {(p["type"], p["name"]): p for p in json.loads(proc.stdout)["plugins"]}
    for row in [("method", "simclr"), ("dataset", "pannuke"), ("protocol", "linear"),
                ("metric-family", "pq"), ("stage-kind", "pretrain"), ("executor", "slurm"),
                ("logger", "tensorboard")]:
        assert rows[row]["distribution"] == "pathbench-harness", row
    assert rows[("metric-family", "pq")]["kind"] == "mpq,bpq"
    assert rows[("executor", "pool")]["kind"] == "-"
    text = harness("list", "executors", tmp_path=tmp_path, columns=200)
    lines = text.stdout.splitlines()
    assert [line.split()[:2] for line in lines[1:]] == [["local", "executor"], ["pool", "executor"],
                                                        ["slurm", "executor"]], text.stdout


@pytest.fixture
def broken_site(tmp_path) -> Path:
    """A distribution (dist-info with an entry point, no pip needed) whose module fails to
    import."""
    site = tmp_path / "site"
    info = site / "harness_fails-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: harness-fails\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("[harness]\nfails = harness_fails\n")
    (site / "harness_fails.py").write_text("raise ImportError('needs missing_dep_xyz')\n")
    return site


def test_list_exits_4_with_a_broken_plugin(tmp_path, broken_site):
    proc = harness("list", tmp_path=tmp_path, site=broken_site)
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    assert ("BROKEN fails (from harness-fails): ImportError: needs missing_dep_xyz"
            in proc.stdout.splitlines())
    assert "scratch" in proc.stdout  # the others are still listed
    proc = harness("list", "--json", tmp_path=tmp_path, site=broken_site)
    assert proc.returncode == 4
    assert json.loads(proc.stdout)["broken"] == [{
        "entry_point": "fails", "distribution": "harness-fails",
        "error": "ImportError: needs missing_dep_xyz"}]


# --- validate --json ---------------------------------------------------------------------------

def test_validate_json(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndataset: synthetic\nmethods: [scrach]\n")
    proc = harness("validate", str(DEMO), str(bad), "--json", tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ""  # everything is in the document
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False
    ok, failed = doc["specs"]
    assert ok == {"spec": str(DEMO), "ok": True, "cells": 18, "exit_code": 0, "problems": []}
    assert failed["spec"] == str(bad) and failed["ok"] is False and failed["exit_code"] == 2
    assert len(failed["problems"]) == 1
    assert failed["problems"][0].startswith(f"{bad}:3: methods.scrach: unknown method")


# --- run --dry-run --json ----------------------------------------------------------------------

def test_dry_run_json_lists_stages_with_deps_and_status(tmp_path):
    proc = harness("run", str(DEMO), "--dry-run", "--json", *TINY, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["spec"] == str(DEMO) and doc["name"] == "demo_full"
    stages = doc["stages"]
    keys = [s["key"] for s in stages]
    assert len(set(keys)) == len(keys)
    assert doc["counts"] == {"cells": 4, "stages": len(stages), "stored": 0,
                             "to_compute": len(stages)}
    seen: set[str] = set()
    for s in stages:  # dependency order: a stage's deps come before it
        assert set(s) == {"kind", "key", "label", "deps", "status", "checkpoint"}
        assert s["status"] == "to-compute" and s["checkpoint"] is False
        assert set(s["deps"].values()) <= seen, s
        seen.add(s["key"])
    assert {s["kind"] for s in stages} >= {"encoder", "pretrain", "finetune", "evaluate"}
    for cell in doc["cells"]:
        assert set(cell["stages"]) <= set(keys)
    # the same plan as the table prints
    table = harness("run", str(DEMO), "--dry-run", *TINY, tmp_path=tmp_path, columns=200)
    assert f"4 cells, {len(stages)} distinct stages" in table.stdout


def test_json_without_dry_run_is_a_usage_error(tmp_path):
    proc = harness("run", str(DEMO), "--json", *TINY, tmp_path=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --json: only with --dry-run (a run's results are in its report.json)"]


# --- exit codes --------------------------------------------------------------------------------

def test_data_prepare_without_source_is_a_usage_error(tmp_path):
    proc = harness("data", "prepare", "pannuke", tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: pannuke: --source PATH is required (")
    assert "Traceback" not in proc.stderr


# --- --set problems name the --set -------------------------------------------------------------

def problems(*overrides: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(DEMO, list(overrides))
    return info.value.problems


def test_set_typo_names_the_set():
    (line,) = problems("methods.simclr.lrr=1")
    assert line.startswith("--set methods.simclr.lrr=1: methods.simclr.lrr: unknown key "
                           "(did you mean 'lr'?)"), line


def test_set_of_a_row_the_spec_lacks_names_the_set():
    (line,) = problems("methods.simclrr.lr=1")
    assert line.startswith("--set methods.simclrr.lr=1: methods.simclrr: unknown method"), line


def test_set_inside_a_spec_value_names_both():
    """A problem of a spec key that a --set reached into: the spec's line and the --set."""
    lines = problems("dataset.name=synthetik")
    assert len(lines) == 1, lines  # the pricon labeler's default dataset is not a second problem
    at = DEMO.read_text().splitlines().index("dataset:") + 1  # the spec's `dataset:` line
    assert lines[0].startswith(f"{DEMO}:{at} (--set dataset.name=synthetik): dataset: unknown "
                               f"dataset 'synthetik'"), lines


def test_set_into_a_yaml_alias_changes_only_the_key_it_names():
    """demo_full.yaml (like demo.yaml) gives simclr and pricon one `augment: *cpu_views`."""
    rspec = load_spec(DEMO, ["methods.simclr.augment.crop_size=32"])
    assert rspec.method_configs["simclr"].augment.crop_size == 32
    assert rspec.method_configs["pricon"].augment.crop_size == 64
