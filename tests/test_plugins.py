"""Plugin discovery as a user meets it: real packages installed with pip, the harness run in a
subprocess that finds them through their entry points.

Nothing is installed into the test environment itself: each package goes with
``pip install --no-deps --no-build-isolation --no-index --target <tmp>/site`` into its own folder
(offline: the build uses the setuptools already installed), and the harness subprocess sees it
through ``PYTHONPATH`` (entry points come from the installed ``*.dist-info``). Every harness
subprocess imports torch (a few seconds), so installs are shared by session fixtures and the
settings are tiny.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import shutil
import subprocess
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from harness.errors import PluginError
from harness.plugins import build_registry

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "harness-example-plugin"
EXAMPLE_SPEC = EXAMPLE / "spec.yaml"
DEMO = REPO / "specs" / "demo_full.yaml"  # the thesis-shaped plan (18 cells)
TINY_DEMO = ["--set", "dataset.images_per_fold=8", "--set", "dataset.unlabeled_images=0",
             "--set", "folds=[fold1]", "--set", "finetune.epochs=1"]


# --- helpers -------------------------------------------------------------------------------------

def pip_install(package: Path, site: Path, scratch: Path) -> None:
    """Install ``package`` into ``site`` the way a user would, but offline and outside the venv.

    The source is copied first so that the in-tree build (``build/``, ``*.egg-info``) never
    lands in the repository."""
    src = scratch / f"src-{package.name}"
    shutil.copytree(package, src, ignore=shutil.ignore_patterns(
        "build", "dist", "*.egg-info", "__pycache__"))
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
           "--no-index", "--no-cache-dir", "--disable-pip-version-check", "--quiet",
           "--target", str(site), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    assert list(site.glob("*.dist-info")), f"no dist-info in {site}"


def harness(*args: object, site: Path | None, store: Path, cwd: Path = REPO,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m harness.cli ARGS`` with ``site`` (if any) on PYTHONPATH, a private store and
    a wide, colourless console so that tables are not truncated."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"HARNESS_STORE": str(store), "COLUMNS": "250", "NO_COLOR": "1",
                "PYTHONIOENCODING": "utf-8", "TERM": "dumb"})
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def table_rows(stdout: str) -> dict[str, list[str]]:
    """Rows of ``harness list`` by name: [name, type, kind, distribution, version, ...] (stdout
    is a pipe here: plain columns, two spaces apart, up to the BROKEN/CONFLICT lines)."""
    rows: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        if line.startswith(("BROKEN ", "CONFLICT ")) or not line.strip():
            continue
        cells = re.split(r"\s{2,}", line.strip(), maxsplit=5)
        if cells and cells[0] != "name":
            rows.setdefault(cells[0], cells)
    return rows


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def make_package(root: Path, dist: str, module: str, entry: str, source: str) -> Path:
    """A one-module distribution ``dist`` whose module registers under the ``harness`` group."""
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.0.1"
        dependencies = ["pathbench-harness"]

        [project.entry-points.harness]
        {entry} = "{module}"

        [tool.setuptools]
        py-modules = ["{module}"]
        """))
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


# --- session fixtures: each package is built and installed once ----------------------------------

def installed_site(tmp_path_factory, name: str, *package: str) -> Path:
    """A site folder holding the package ``make_package(..., *package)`` (without ``package``:
    the example package), installed with pip."""
    base = tmp_path_factory.mktemp(name)
    pip_install(make_package(base / "pkg", *package) if package else EXAMPLE, base / "site", base)
    return base / "site"


@pytest.fixture(scope="session")
def example_site(tmp_path_factory) -> Path:
    return installed_site(tmp_path_factory, "example_plugin")


@pytest.fixture(scope="session")
def broken_site(tmp_path_factory) -> Path:
    return installed_site(tmp_path_factory, "broken_plugin", "harness-broken-plugin", "harness_broken",
                          "broken_method", """\
                          raise ImportError("harness_broken needs 'nonexistent_dependency_xyz'")
                          """)


@pytest.fixture(scope="session")
def typo_site(tmp_path_factory) -> Path:
    return installed_site(tmp_path_factory, "typo_plugin", "harness-typo-logger", "harness_typo_logger",
                          "typo_logger", """\
                          from harness.hookspecs import hookimpl


                          @hookimpl
                          def harness_cell_finshed(cell, record):
                              print(record["cell_id"])
                          """)


@pytest.fixture(scope="session")
def duplicate_site(tmp_path_factory) -> Path:
    return installed_site(tmp_path_factory, "duplicate_plugin", "harness-other-scratch",
                          "harness_other_scratch", "scratch", """\
                          from harness.hookspecs import hookimpl
                          from harness.methods import HALF_NORMALIZATION, InitMethod


                          class OtherScratch(InitMethod):
                              name = "scratch"

                              def init_encoder(self, encoder, encoder_name, seed):
                                  return HALF_NORMALIZATION


                          @hookimpl
                          def harness_register_methods():
                              return [OtherScratch]
                          """)


# --- 1. the example package ----------------------------------------------------------------------

def test_example_package_is_listed_with_builtins(example_site, tmp_path):
    result = harness("list", site=example_site, store=tmp_path / "store")
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert rows["example_blur"][:5] == ["example_blur", "method", "init",
                                        "harness-example-plugin", "0.1.0"]
    assert rows["example_blobs"][:4] == ["example_blobs", "dataset", "labeled",
                                         "harness-example-plugin"]
    for builtin, category in (("scratch", "method"), ("supervised", "method"),
                              ("synthetic", "dataset")):
        assert rows[builtin][1] == category
        assert rows[builtin][3] == "pathbench-harness"
    assert "BROKEN" not in result.stdout and "CONFLICT" not in result.stdout


# --- 2. validating and running the example spec --------------------------------------------------

def test_example_spec_validates_and_runs(example_site, tmp_path):
    store, output = tmp_path / "store", tmp_path / "run"
    result = harness("validate", EXAMPLE_SPEC, site=example_site, store=store)
    assert result.returncode == 0, result.stderr
    assert "ok (4 cells)" in result.stdout

    # One fold and one epoch keep the test short (each training step costs seconds on a CPU).
    result = harness("run", EXAMPLE_SPEC, "--set", "folds=[fold2]", "--set", "finetune.epochs=1",
                     "--store", store, "--output", output, "--quiet", site=example_site,
                     store=store)
    assert result.returncode == 0, result.stderr
    assert "2 cells; 6 stages computed, 0 reused" in result.stdout
    records = sorted(p.name for p in (output / "records").glob("*.json"))
    assert records == ["example_blur__full__frac1__fold2__seed0.json",
                       "scratch__full__frac1__fold2__seed0.json"]
    record = json.loads((output / "records" / records[0]).read_text())
    assert record["dataset"] == "example_blobs"
    assert record["provenance"]["plugins"]["method:example_blur"] == \
        "1@harness-example-plugin==0.1.0"
    assert 0.0 <= record["metric"]["value"] <= 1.0
    report = (output / "report.md").read_text()
    assert "| example_blur |" in report and "| scratch |" in report
    assert "example_blobs" in report


def test_example_package_tests_itself_with_the_kit(example_site, tmp_path):
    """The example package's own tests (`check_plugin` on its four plugins) against the
    installed package: the README's test command covers them."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"PYTHONPATH": str(example_site), "HARNESS_STORE": str(tmp_path / "store")})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(EXAMPLE),
         "-c", str(EXAMPLE / "pyproject.toml"), str(EXAMPLE / "tests")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


def load_example_module(site: Path, name: str):
    """A module of the installed example package, loaded from its file: the test process does
    not get the package on sys.path (which would change the registry of other tests)."""
    module_name = f"_installed_harness_example_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name,
                                                      site / "harness_example" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def test_example_dataset_contract(example_site, tmp_path):
    blobs = load_example_module(example_site, "blobs")
    dataset = blobs.ExampleBlobs(None, root=tmp_path / "blobs")
    assert dataset.folds(dataset.config) == ["fold1", "fold2"] and dataset.num_classes == 3
    assert dataset.expected_group_sizes(dataset.config) == {"fold1": 8, "fold2": 8}
    assert not dataset.is_prepared() and dataset.verify()
    dataset.prepare()
    assert dataset.is_prepared() and dataset.verify() == []
    assert not list(tmp_path.glob(".blobs.tmp-*"))  # prepared atomically, nothing left over
    arrays = dataset.load()
    assert arrays.images.shape == (16, 64, 64, 3) and arrays.images.dtype == np.uint8
    assert arrays.instances.dtype == np.int32 and arrays.classes.dtype == np.uint8
    assert set(np.unique(arrays.classes)) == {0, 1, 2}
    assert np.array_equal(arrays.instances > 0, arrays.classes > 0)
    assert arrays.groups == ["fold1"] * 8 + ["fold2"] * 8 and len(set(arrays.ids)) == 16
    split = dataset.split("fold1", arrays)
    assert split.test == arrays.ids[:8] and split.train_ids == arrays.ids[8:]
    again = blobs.ExampleBlobs(None, root=tmp_path / "again")
    again.prepare()
    assert np.array_equal(again.load().images, arrays.images)  # same config, same data

    np.save(dataset.root / "classes.npy", np.full((16, 64, 64), 7, np.uint8))
    assert any("class ids above 2" in p for p in dataset.verify())
    (dataset.root / "images.npy").unlink()
    assert any(p.startswith("images.npy cannot be read") for p in dataset.verify())


def test_example_method_contract(example_site):
    import torch

    from harness.engine.model import build_encoder

    blur = load_example_module(example_site, "blur")
    field = blur.ExampleBlur.Config.model_fields["sigma"]
    assert field.default == 1.0 and field.description
    assert blur.ExampleBlur.kind == "init" and blur.ExampleBlur.seed_dependent
    torch.manual_seed(0)
    encoder = build_encoder("resnet18")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    method = blur.ExampleBlur(blur.ExampleBlur.Config(sigma=2.0))
    assert method.init_encoder(encoder, "resnet18", 0) == {"mean": [0.5] * 3, "std": [0.5] * 3}
    changed = [k for k, v in encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == ["conv1.weight"]
    weight = encoder.conv1.weight.detach()
    assert torch.allclose(weight[0, 0].sum(), torch.tensor(1.0))  # smoothing, red channel
    assert float(weight[0, 1:].abs().sum()) == 0.0
    assert abs(float(weight[-1].sum())) < 1e-5  # an edge filter has zero mean


# --- 3. a broken plugin is isolated --------------------------------------------------------------

def test_broken_plugin_is_listed_and_does_not_break_others(broken_site, tmp_path):
    store = tmp_path / "store"
    result = harness("list", site=broken_site, store=store)
    assert result.returncode == 4, result.stderr  # listed, and CI sees that something is broken
    broken = [line for line in result.stdout.splitlines() if line.startswith("BROKEN")]
    assert broken == ["BROKEN broken_method (from harness-broken-plugin): ImportError: "
                      "harness_broken needs 'nonexistent_dependency_xyz'"]
    rows = table_rows(result.stdout)
    assert {"scratch", "supervised", "synthetic"} <= set(rows)

    result = harness("run", DEMO, "--dry-run", "--store", store, *TINY_DEMO,
                     site=broken_site, store=store)
    assert result.returncode == 0, result.stderr
    assert "6 cells" in result.stdout and "Traceback" not in result.stderr


def test_misspelled_hook_is_a_broken_plugin_naming_its_distribution(typo_site, tmp_path):
    """pluggy alone would silently never call it; the harness lists it with the likely name."""
    result = harness("list", "methods", site=typo_site, store=tmp_path / "store")
    assert result.returncode == 4, result.stderr
    broken = [line for line in result.stdout.splitlines() if line.startswith("BROKEN")]
    assert broken == ["BROKEN typo_logger (from harness-typo-logger): hook implementation "
                      "'harness_cell_finshed' matches no hook of the harness (did you mean "
                      "'harness_cell_finished'?); see harness/hookspecs.py"]
    assert {"scratch", "supervised"} <= set(table_rows(result.stdout))


# --- 4. two plugins with the same name -----------------------------------------------------------

def test_duplicate_names_are_a_plugin_error(duplicate_site, tmp_path):
    store = tmp_path / "store"
    result = harness("list", site=duplicate_site, store=store)
    assert result.returncode == 4, (result.stdout, result.stderr)
    conflict = [line for line in result.stdout.splitlines() if line.startswith("CONFLICT")]
    assert len(conflict) == 1
    assert "'scratch'" in conflict[0]
    assert "pathbench-harness" in conflict[0] and "harness-other-scratch" in conflict[0]

    result = harness("validate", DEMO, site=duplicate_site, store=store)
    assert result.returncode == 4, (result.stdout, result.stderr)
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "scratch" in lines[0]
    assert "pathbench-harness" in lines[0] and "harness-other-scratch" in lines[0]
    assert "Traceback" not in result.stderr


# --- 5. a method that is not installed, and one that is misspelled -------------------------------

def validate_methods_error(tmp_path, methods: str, code: int) -> str:
    """The one stderr line, without a traceback, of ``harness validate DEMO --set
    methods=[METHODS]``, which exits ``code``."""
    result = harness("validate", DEMO, "--set", f"methods=[{methods}]", site=None,
                     store=tmp_path / "store")
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_method_not_installed_is_exit_4(tmp_path):
    line = validate_methods_error(tmp_path, "nonexistent_method_xyz", 4)
    assert "nonexistent_method_xyz" in line and "not installed" in line
    assert "did you mean" not in line


def test_misspelled_method_is_exit_2_with_suggestion(tmp_path):
    assert "did you mean 'scratch'" in validate_methods_error(tmp_path, "scrach", 2)


# --- 6. the registry in-process ------------------------------------------------------------------

def test_plugin_version_includes_distribution_version():
    registry = build_registry()
    info = registry.method("scratch")
    dist_version = md.version("pathbench-harness")
    assert info.distribution == "pathbench-harness" and info.dist_version == dist_version
    assert info.version == f"{info.cls.version}@pathbench-harness=={dist_version}"
    assert registry.dataset("synthetic").version.endswith(f"@pathbench-harness=={dist_version}")
    assert info.kind == "init" and info.category == "method"
    assert registry.broken == [] and registry.duplicates == []


def test_registry_lookup_of_unknown_names():
    registry = build_registry()
    with pytest.raises(PluginError, match="not installed") as exc:
        registry.method("nope")
    assert exc.value.exit_code == 4
    with pytest.raises(PluginError, match="did you mean 'scratch'"):
        registry.method("scrach")
    with pytest.raises(PluginError, match="dataset plugin 'nope'"):
        registry.dataset("nope")
