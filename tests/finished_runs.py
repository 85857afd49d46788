"""Tiny runs finished once per test session, on demand (the ``finished_runs`` fixture of
conftest.py): ``finished_runs.get(NAME)`` runs :data:`RUNS` ``[NAME]`` the first time a test asks
for it and gives every later test the same store and output folder. A ``-k`` selection pays only
for the runs its tests ask for.

A test reads a finished run (records, report, stage files, a dry run's plan). A test that writes
(a rerun, ``harness report``, a stage removed or replaced) works on its own copy
(``shutil.copytree`` into its ``tmp_path``), where a run reuses what the copy holds and computes
the rest."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from support import REPO, TINY_SPEC, run_cli


def sets(*overrides: str) -> list[str]:
    """``--set O`` for each override ``O``."""
    return [arg for override in overrides for arg in ("--set", override)]


#: The demo's settings cut to seconds: one fold, 32 px, one epoch of everything.
DEMO_OVERRIDES = ["finetune.epochs=1", "dataset.images_per_fold=8", "dataset.image_size=32",
                  "dataset.unlabeled_images=8", "dataset.unlabeled_size=32",
                  "finetune.batch_size=8", "folds=[fold1]",
                  *(f"methods.{m}.{k}" for m in ("simclr", "pricon")
                    for k in ("epochs=1", "batch_size=4", "augment.crop_size=32")),
                  "methods.pricon.labeler.epochs=1", "methods.pricon.labeler.batch_size=8",
                  "methods.pricon.resolution=4"]
DEMO_TINY = sets(*DEMO_OVERRIDES)


def one_scratch_cell(batch_size: int) -> list[str]:
    """``--set`` options that cut a shipped spec to scratch under full fine-tuning: one epoch
    on the CPU, batches of ``batch_size``, no loader workers."""
    return sets("methods=[scratch]", "protocols=[full]", "finetune.epochs=1",
                f"finetune.batch_size={batch_size}", f"finetune.eval_batch_size={batch_size}",
                "finetune.num_workers=0", "finetune.device=cpu")

#: One cell, encoder -> full fine-tuning (one epoch) -> evaluation.
CHAIN_SPEC = TINY_SPEC.replace("protocols: [frozen, full]", "protocols: [full]").replace(
    "epochs: 2", "epochs: 1")

#: name: (the spec: a shipped spec's path relative to the repository or a spec's text; its
#: overrides; whether through ``harness run`` in a subprocess, whose console output a test
#: reads, or through the Runner in this process, which spares a torch import)
RUNS: dict[str, tuple[str, list[str], bool]] = {
    "demo": ("specs/demo.yaml", DEMO_OVERRIDES, True),
    "demo_full": ("specs/demo_full.yaml", DEMO_OVERRIDES, True),
    # the frozen and the full cell of TINY_SPEC, one epoch each (the full cell is CHAIN_SPEC's)
    "tiny": (TINY_SPEC, ["finetune.epochs=1"], False),
}


@dataclass(frozen=True)
class FinishedRun:
    """A finished run: its spec file, store, output folder and console output (empty for a run
    in this process)."""

    spec: Path
    store: Path
    out: Path
    stdout: str
    stderr: str

    def records(self) -> dict[str, dict]:
        """The run's records by cell id."""
        return {p.stem: json.loads(p.read_text()) for p in sorted((self.out / "records").glob("*.json"))}


class FinishedRuns:
    """The session's finished runs, each run the first time a test asks for it."""

    def __init__(self, root: Path):
        self.root = root
        self._runs: dict[str, FinishedRun | Exception] = {}

    def get(self, name: str) -> FinishedRun:
        if name not in self._runs:
            try:
                self._runs[name] = self._run(name)
            except Exception as exc:  # every test asking for it fails alike, no rerun
                self._runs[name] = exc
        found = self._runs[name]
        if isinstance(found, Exception):
            raise found
        return found

    def _run(self, name: str) -> FinishedRun:
        spec_source, overrides, via_cli = RUNS[name]
        folder = self.root / name
        folder.mkdir(parents=True)
        if spec_source.endswith(".yaml"):
            spec = REPO / spec_source
        else:
            spec = folder / "spec.yaml"
            spec.write_text(spec_source)
        store, out = folder / "store", folder / "out"
        if not via_cli:
            _run_in_process(spec, overrides, store, out)
            return FinishedRun(spec, store, out, "", "")
        proc: subprocess.CompletedProcess = run_cli(
            "run", str(spec), *sets(*overrides), "--store", str(store), "--output", str(out), "--quiet")
        assert proc.returncode == 0, f"shared run {name!r} failed:\n{proc.stderr[-3000:]}"
        return FinishedRun(spec, store, out, proc.stdout, proc.stderr)


def _run_in_process(spec: Path, overrides: list[str], store: Path, out: Path) -> None:
    from harness.plugins import build_registry
    from harness.runner import Runner
    from harness.spec import load_spec
    from harness.store import ArtifactStore

    registry = build_registry()
    runner = Runner(load_spec(spec, overrides, registry=registry), registry, ArtifactStore(store),
                    out, quiet=True)
    runner.run(runner.plan()[0])


# --- a dataset prepared and run through the CLI, in a test's own folder ----------------------------
# From ``tmp_path``, outside the checkout: `python -m` puts the cwd first on sys.path, where a
# stale *.egg-info from an old build would hide the installed entry points.

def cli_prepare(tmp_path: Path, dataset: str, source: Path) -> Path:
    """``harness data prepare DATASET --source SOURCE --store tmp_path/store``: the store."""
    store = tmp_path / "store"
    res = run_cli("data", "prepare", dataset, "--source", str(source), "--store", str(store),
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return store


def cli_run(tmp_path: Path, spec: str | Path, *args: str) -> Path:
    """``harness run SPEC ARGS`` on ``tmp_path/store`` (a spec's text is written to a file
    first): the output folder, ``tmp_path/out``."""
    if isinstance(spec, str):
        (tmp_path / "spec.yaml").write_text(spec)
        spec = tmp_path / "spec.yaml"
    out = tmp_path / "out"
    res = run_cli("run", str(spec), "--store", str(tmp_path / "store"), "--output", str(out),
                  "--quiet", *args, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    return out
