"""Every missing input of a spec is listed at once, before any work, each with its fix (exit 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import REPO, TINY_SPEC, run_cli, write_spec


def _missing_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:   - ")]


@pytest.mark.parametrize("dry_run", [True, False])
def test_pannuke_frozen_on_an_empty_store_lists_weights_pannuke_and_tcga(tmp_path, torch_home, dry_run):
    spec = REPO / "specs" / "pannuke_frozen.yaml"
    args = ["run", str(spec), "--store", str(tmp_path / "store"), "--output", str(tmp_path / "out")]
    proc = run_cli(*args, *(["--dry-run"] if dry_run else []), env={"TORCH_HOME": str(torch_home)})
    assert proc.returncode == 3, proc.stderr
    lines = _missing_lines(proc.stderr)
    assert len(lines) == 3, proc.stderr  # the ImageNet weights, PanNuke, TCGA
    weights, pannuke, tcga = lines
    assert "ImageNet weights for resnet18" in weights and "download.pytorch.org" in weights
    assert "dataset 'pannuke' is not prepared" in pannuke and "harness data prepare pannuke" in pannuke
    # the fix repeats the run's --store: typed as shown, it prepares the cache the run looks for
    assert f"`harness data prepare pannuke --source PATH --store {tmp_path / 'store'}`" in pannuke
    assert "licence" in pannuke
    assert "dataset 'tcga' (unlabeled set) is not prepared" in tcga and "gdc" in tcga.lower()
    assert proc.stderr.startswith("error: 3 inputs missing (nothing was run)")
    # nothing was run: no run folder, no stage in the store
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "store" / "stages").exists()


def test_weights_file_named_in_a_spec_and_a_labeler_dataset(tmp_path, torch_home):
    """A weights path in the spec, an unprepared unlabeled set and a labeler dataset that is not
    the spec's own: each is a line of the one report; a generated dataset is never missing."""
    spec = write_spec(tmp_path, TINY_SPEC.replace(
        "methods: [scratch]",
        f"methods:\n  supervised: {{weights: {tmp_path / 'nowhere.pth'}}}\n"
        "  pricon: {labeler: {dataset: tnbc}}\nunlabeled: tcga"))
    proc = run_cli("validate", str(spec))
    assert proc.returncode == 0, proc.stderr  # a valid spec: only its inputs are missing
    proc = run_cli("run", str(spec), "--dry-run", "--store", str(tmp_path / "store"))
    assert proc.returncode == 3, proc.stderr
    text = "\n".join(_missing_lines(proc.stderr))
    assert len(_missing_lines(proc.stderr)) == 3, proc.stderr
    assert "nowhere.pth" in text
    assert "dataset 'tcga' (unlabeled set)" in text
    assert "dataset 'tnbc' (labeler dataset of pricon)" in text
    assert "synthetic" not in text


def test_nothing_missing_is_no_report(tmp_path):
    from harness.plugins import get_registry
    from harness.preflight import missing_inputs
    from harness.spec import load_spec
    from harness.store import ArtifactStore

    rspec = load_spec(write_spec(tmp_path), [])
    assert missing_inputs(rspec, get_registry(), ArtifactStore(Path(tmp_path / "store"))) == []
    # a generated dataset not generated yet counts as missing only when it may not be generated
    assert len(missing_inputs(rspec, get_registry(), ArtifactStore(tmp_path / "store"), prepare=False)) == 1


def test_one_missing_input_is_one_line():
    from harness.errors import MissingInputs

    assert MissingInputs(["a: missing; get it"]).problems == ["a: missing; get it"]
    assert MissingInputs(["a", "b"]).problems == [
        "2 inputs missing (nothing was run); fix each, then run again:", "  - a", "  - b"]


def test_fix_line_names_store_and_options_only_where_needed(tmp_path, monkeypatch):
    """``--store`` only when the cache is not in the default store ($HARNESS_STORE or the user
    cache); ``--set`` for each cache option that is not its default."""
    from harness.data.base import dataset_root, prepare_command_for
    from harness.plugins import get_registry
    from harness.store import ArtifactStore

    info = get_registry().dataset("tcga")
    monkeypatch.setenv("HARNESS_STORE", str(tmp_path / "default"))
    for store, extra in ((None, ""), (tmp_path / "default", ""),
                         (tmp_path / "other", f" --store {tmp_path / 'other'}")):
        config = info.cls.Config()
        dataset = info.cls(config, root=dataset_root(info.cls, config, ArtifactStore(store)))
        assert prepare_command_for(dataset) == "harness data prepare tcga --source PATH" + extra
    field = next(k for k in (info.cls.cache_fields or info.cls.Config.model_fields)
                 if isinstance(getattr(info.cls.Config(), k), int)
                 and not isinstance(getattr(info.cls.Config(), k), bool))
    config = info.cls.Config.model_validate({field: getattr(info.cls.Config(), field) * 2})
    dataset = info.cls(config, root=dataset_root(info.cls, config, ArtifactStore(None)))
    assert prepare_command_for(dataset) == \
        f"harness data prepare tcga --source PATH --set {field}={getattr(config, field)}"
