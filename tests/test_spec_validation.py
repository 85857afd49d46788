"""Spec validation: every bad spec gives a SpecError (exit 2) whose lines name the field path,
the bad value, what is allowed and a "did you mean", with ``file:line``; a dataset or method
plugin that is not installed at all is a PluginError (exit 4). Nothing here touches data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import pytest

from harness.errors import PluginError, SpecError
from harness.hookspecs import hookimpl
from harness.methods import Method, MethodConfig, SemiSupervisedSettings
from harness.plugins import build_registry
from harness.spec import ResolvedSpec, apply_overrides, load_spec
from harness_builtin.datasets.synthetic import SyntheticDataset

BASE = """\
name: base
dataset: synthetic
methods: [scratch]
protocols: [full]
finetune:
  epochs: 2
  batch_size: 8
"""
# Line numbers of BASE's keys (1-based).
LINE = {"name": 1, "dataset": 2, "methods": 3, "protocols": 4, "finetune": 5, "finetune.epochs": 6,
        "finetune.batch_size": 7}


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path: Path, **kw) -> list[str]:
    """The problems of a spec that must be invalid."""
    with pytest.raises(SpecError) as info:
        load_spec(path, **kw)
    exc = info.value
    assert exc.exit_code == 2
    assert exc.problems, "a SpecError lists its problems"
    for p in exc.problems:
        assert "\n" not in p, f"one line per problem: {p!r}"
    return exc.problems


def only_problem(path: Path, **kw) -> str:
    problems = problems_of(path, **kw)
    assert len(problems) == 1, problems
    return problems[0]


def at_line(path: Path, line: int) -> str:
    return f"{path}:{line}: "


# --- the base spec is valid ------------------------------------------------------------------

def test_base_spec_is_valid(tmp_path):
    rspec = load_spec(write(tmp_path, BASE))
    assert isinstance(rspec, ResolvedSpec)
    assert rspec.name == "base"
    assert rspec.spec.finetune.epochs == 2
    assert list(rspec.method_configs) == ["scratch"]
    assert rspec.dataset_config.images_per_fold == 40


# --- keys --------------------------------------------------------------------------------------

def test_misspelled_top_level_key(tmp_path):
    path = write(tmp_path, BASE.replace("methods:", "methds:"))
    problems = problems_of(path)
    typo = [p for p in problems if "methds" in p]
    assert len(typo) == 1
    line = typo[0]
    assert line.startswith(at_line(path, LINE["methods"]) + "methds: unknown key")
    assert "did you mean 'methods'?" in line
    assert "allowed keys:" in line and "protocols" in line and "finetune" in line
    # ... and the key it replaced is missing
    assert any(re.search(r": methods: required field is missing$", p) for p in problems)


def test_misspelled_nested_key(tmp_path):
    path = write(tmp_path, BASE.replace("epochs:", "epocs:"))
    line = only_problem(path)
    assert line.startswith(at_line(path, LINE["finetune.epochs"]) + "finetune.epocs: unknown key")
    assert "did you mean 'epochs'?" in line
    assert "allowed keys:" in line and "batch_size" in line and "lr" in line


def test_missing_required_name(tmp_path):
    path = write(tmp_path, BASE.replace("name: base\n", ""))
    line = only_problem(path)
    assert "name: required field is missing" in line
    assert line.startswith(str(path))


def test_invalid_name_pattern(tmp_path):
    path = write(tmp_path, BASE.replace("name: base", "name: my spec!"))
    line = only_problem(path)
    assert line.startswith(at_line(path, LINE["name"]) + "name:")
    assert "'my spec!'" in line
    assert "A-Za-z0-9_.-" in line  # what is allowed


# --- types, ranges, literals ----------------------------------------------------------------------

def test_wrong_type(tmp_path):
    path = write(tmp_path, BASE.replace("epochs: 2", "epochs: ten"))
    line = only_problem(path)
    assert line.startswith(at_line(path, LINE["finetune.epochs"]) + "finetune.epochs:")
    assert "integer" in line and "'ten'" in line


def test_epochs_out_of_range(tmp_path):
    path = write(tmp_path, BASE.replace("epochs: 2", "epochs: 0"))
    line = only_problem(path)
    assert line.startswith(at_line(path, LINE["finetune.epochs"]) + "finetune.epochs:")
    assert "greater than or equal to 1" in line and "(got 0)" in line


def test_negative_learning_rate(tmp_path):
    path = write(tmp_path, BASE + "  lr: -1\n")
    line = only_problem(path)
    assert line.startswith(at_line(path, 8) + "finetune.lr:")
    assert "greater than 0" in line and "(got -1)" in line


def test_bad_protocol_literal(tmp_path):
    path = write(tmp_path, BASE.replace("[full]", "[full, froze]"))
    line = only_problem(path)
    assert line.startswith(at_line(path, LINE["protocols"]) + "protocols.1:")
    assert "'froze'" in line
    assert "'frozen'" in line and "'full'" in line  # what is allowed
    assert "did you mean 'frozen'?" in line


@pytest.mark.parametrize("fraction", ["0", "1.5", "-0.1"])
def test_fraction_out_of_range(tmp_path, fraction):
    path = write(tmp_path, BASE + f"fractions: [0.5, {fraction}]\n")
    line = only_problem(path)
    assert line.startswith(at_line(path, 8) + "fractions:")
    assert "(0, 1]" in line
    assert str(float(fraction)) in line


def test_duplicate_seeds(tmp_path):
    path = write(tmp_path, BASE + "seeds: [0, 1, 0]\n")
    line = only_problem(path)
    assert line.startswith(at_line(path, 8) + "seeds:")
    assert "duplicate entries: 0" in line


def test_bad_device_string(tmp_path):
    path = write(tmp_path, BASE + "  device: gpu\n")
    line = only_problem(path)
    assert line.startswith(at_line(path, 8) + "finetune.device:")
    assert "'gpu'" in line
    assert "'cuda:N'" in line and "'cpu'" in line


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "auto"])
def test_good_device_strings(tmp_path, device):
    rspec = load_spec(write(tmp_path, BASE + f"  device: '{device}'\n"))
    assert rspec.spec.finetune.device == device


def test_image_size_not_multiple_of_32(tmp_path):
    path = write(tmp_path, BASE + "  image_size: 50\n")
    line = only_problem(path)
    assert line.startswith(at_line(path, 8) + "finetune.image_size:")
    assert "multiple of 32" in line and "(got 50)" in line
    assert "try 64" in line


def test_empty_methods(tmp_path):
    path = write(tmp_path, BASE.replace("methods: [scratch]", "methods: []"))
    line = only_problem(path)
    assert line.startswith(at_line(path, LINE["methods"]) + "methods:")
    assert "at least one method" in line


# --- plugins -------------------------------------------------------------------------------------

def test_unknown_method_with_close_match(tmp_path):
    path = write(tmp_path, BASE.replace("[scratch]", "[scrach]"))
    line = only_problem(path)
    assert line.startswith(at_line(path, LINE["methods"]) + "methods.scrach:")
    assert "unknown method 'scrach'" in line
    assert "did you mean 'scratch'?" in line


def test_unknown_dataset_with_close_match(tmp_path):
    path = write(tmp_path, BASE.replace("dataset: synthetic", "dataset: synthetc"))
    line = only_problem(path)
    assert line.startswith(at_line(path, LINE["dataset"]) + "dataset:")
    assert "unknown dataset 'synthetc'" in line
    assert "did you mean 'synthetic'?" in line


def test_dataset_plugin_not_installed_is_plugin_error(tmp_path):
    path = write(tmp_path, BASE.replace("dataset: synthetic", "dataset: consep"))
    with pytest.raises(PluginError) as info:
        load_spec(path)
    exc = info.value
    assert exc.exit_code == 4
    message = str(exc)
    assert "\n" not in message
    assert "dataset plugin 'consep' is not installed" in message
    assert "synthetic" in message  # what is installed
    assert message.startswith(at_line(path, LINE["dataset"]))


def test_method_plugin_not_installed_is_plugin_error(tmp_path):
    path = write(tmp_path, BASE.replace("[scratch]", "[scratch, moco_v9]"))
    with pytest.raises(PluginError) as info:
        load_spec(path)
    message = str(info.value)
    assert info.value.exit_code == 4 and "\n" not in message
    assert "method plugin 'moco_v9' is not installed" in message
    assert "scratch" in message and "supervised" in message


def test_missing_plugin_and_other_problems_is_spec_error(tmp_path):
    """A missing plugin next to real spec problems: every problem, as one SpecError."""
    path = write(tmp_path, BASE.replace("dataset: synthetic", "dataset: consep")
                 .replace("epochs: 2", "epochs: 0"))
    problems = problems_of(path)
    assert any("finetune.epochs" in p for p in problems)
    assert any("dataset plugin 'consep' is not installed" in p for p in problems)


def test_method_setting_that_does_not_exist(tmp_path):
    path = write(tmp_path, BASE.replace("methods: [scratch]",
                                        "methods:\n  scratch:\n  supervised:\n    wieghts: x"))
    line = only_problem(path)
    assert line.startswith(at_line(path, 6) + "methods.supervised.wieghts: unknown key")
    assert "did you mean 'weights'?" in line
    assert "allowed keys: weights" in line


def test_method_settings_are_parsed(tmp_path):
    path = write(tmp_path, BASE.replace("methods: [scratch]",
                                        "methods:\n  supervised:\n    weights: /some/file.pth"))
    rspec = load_spec(path)
    assert str(rspec.method_configs["supervised"].weights) == "/some/file.pth"


def test_dataset_option_out_of_range(tmp_path):
    path = write(tmp_path, BASE.replace("dataset: synthetic",
                                        "dataset:\n  name: synthetic\n  image_size: 8"))
    line = only_problem(path)
    assert line.startswith(at_line(path, 4) + "dataset.image_size:")
    assert "greater than or equal to 32" in line and "(got 8)" in line


def test_dataset_option_that_does_not_exist(tmp_path):
    path = write(tmp_path, BASE.replace("dataset: synthetic",
                                        "dataset:\n  name: synthetic\n  imagesize: 64"))
    line = only_problem(path)
    assert line.startswith(at_line(path, 4) + "dataset.imagesize: unknown key")
    assert "did you mean 'image_size'?" in line
    assert "images_per_fold" in line  # allowed keys are listed


def test_dataset_options_are_parsed(tmp_path):
    path = write(tmp_path, BASE.replace("dataset: synthetic",
                                        "dataset:\n  name: synthetic\n  images_per_fold: 12"))
    rspec = load_spec(path)
    assert rspec.dataset_config.images_per_fold == 12
    assert rspec.resolved()["dataset"]["images_per_fold"] == 12


# --- cross-field checks -------------------------------------------------------------------------

def test_unknown_encoder(tmp_path):
    path = write(tmp_path, BASE + "  encoder: resnet19\n")
    line = only_problem(path)
    assert line.startswith(at_line(path, 8) + "finetune.encoder:")
    assert "unknown encoder 'resnet19'" in line
    assert "did you mean 'resnet18'?" in line


def test_unknown_fold(tmp_path):
    path = write(tmp_path, BASE + "folds: [fold1, fold9]\n")
    line = only_problem(path)
    assert line.startswith(at_line(path, 8) + "folds:")
    assert "unknown fold 'fold9'" in line
    assert "fold1, fold2, fold3" in line  # what the dataset has


def test_metric_not_applicable_to_dataset(tmp_path):
    path = write(tmp_path, BASE + "metric:\n  name: dice\n")
    line = only_problem(path)
    assert line.startswith(at_line(path, 9) + "metric.name:")
    assert "'dice'" in line and "synthetic" in line
    assert "allowed: mpq, bpq" in line


def test_unknown_reference_table(tmp_path):
    path = write(tmp_path, BASE + "reference: pannuk\n")
    line = only_problem(path)
    assert line.startswith(at_line(path, 8) + "reference:")
    assert "unknown table 'pannuk'" in line
    assert "did you mean 'pannuke'?" in line


def test_known_reference_table(tmp_path):
    assert load_spec(write(tmp_path, BASE + "reference: pannuke\n")).spec.reference == "pannuke"


def test_fraction_leaves_fewer_images_than_batch_size(tmp_path):
    """0.01 of two training folds of 40 images: ceil(0.4) + ceil(0.4) = 2 images < batch 16."""
    path = write(tmp_path, BASE.replace("dataset: synthetic",
                                        "dataset:\n  name: synthetic\n  images_per_fold: 40")
                 .replace("batch_size: 8", "batch_size: 16") + "fractions: [1.0, 0.01]\n")
    line = only_problem(path)
    assert line.startswith(at_line(path, 10) + "fractions:")
    assert "0.01" in line and "batch_size" in line and "16" in line


class _SizedSynthetic(SyntheticDataset):
    """A dataset that knows its group sizes without data (the synthetic generator, renamed)."""

    name = "sizedsynth"

    @classmethod
    def expected_group_sizes(cls, config):
        return {g: config.images_per_fold for g in cls.folds(config)}


class _FakeSemi(Method):
    name: ClassVar[str] = "fakesemi"
    kind: ClassVar[str] = "semisupervised"
    Config: ClassVar[type[MethodConfig]] = SemiSupervisedSettings  # what its kind's engine reads

    def mix(self, images, labels, confidence):  # its kind's contract method (checked at load)
        return images, labels, confidence


class _LocalPlugins:
    @hookimpl
    def harness_register_methods(self):
        return [_FakeSemi]

    @hookimpl
    def harness_register_datasets(self):
        return [_SizedSynthetic]


@pytest.fixture(scope="module")
def registry():
    reg = build_registry(extra_plugins=[_LocalPlugins()])
    assert "fakesemi" in reg.methods and reg.methods["fakesemi"].kind == "semisupervised"
    assert "sizedsynth" in reg.datasets and "scratch" in reg.methods
    return reg


SIZED = BASE.replace("dataset: synthetic", "dataset:\n  name: sizedsynth\n  images_per_fold: 40")


@pytest.mark.parametrize("fraction,batch,ok", [
    (0.01, 16, False),  # 1 + 1 = 2 training images
    (0.01, 2, True),
    (0.1, 8, True),     # ceil(0.1 * 40) = 4 per fold (not 5): 8 images
    (0.1, 9, False),
    (1.0, 80, True),
    (1.0, 81, False),
])
def test_fraction_batch_check_uses_the_fraction_rule(tmp_path, registry, fraction, batch, ok):
    path = write(tmp_path, SIZED.replace("batch_size: 8", f"batch_size: {batch}")
                 + f"fractions: [{fraction}]\n")
    if ok:
        load_spec(path, registry=registry)
        return
    line = only_problem(path, registry=registry)
    assert line.startswith(at_line(path, 10) + f"fractions: {fraction} leaves ")
    assert f"fewer than finetune.batch_size {batch}" in line


def test_frozen_protocol_for_semisupervised_method(tmp_path, registry):
    path = write(tmp_path, BASE.replace("[scratch]", "[scratch, fakesemi]")
                 .replace("[full]", "[frozen, full]"))
    line = only_problem(path, registry=registry)
    assert line.startswith(at_line(path, LINE["methods"]) + "methods.fakesemi:")
    assert "protocol 'frozen'" in line and "semi-supervised" in line
    assert "no separate encoder stage to freeze" in line
    assert "protocols: [full]" in line  # the fix
    # the full protocol alone is fine
    ok = load_spec(write(tmp_path, BASE.replace("[scratch]", "[scratch, fakesemi]"), "ok.yaml"),
                   registry=registry)
    assert set(ok.method_configs) == {"scratch", "fakesemi"}


def test_default_protocols_include_frozen_for_semisupervised(tmp_path, registry):
    """Leaving `protocols` out means [frozen, full]: the same problem must be reported."""
    text = BASE.replace("[scratch]", "[fakesemi]").replace("protocols: [full]\n", "")
    line = only_problem(write(tmp_path, text), registry=registry)
    assert "methods.fakesemi:" in line and "no separate encoder stage to freeze" in line


# --- files and YAML ----------------------------------------------------------------------------

def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, BASE + "seeds: [0, 1\nfoo: bar\n")
    line = only_problem(path)
    assert re.match(rf"{re.escape(str(path))}:(8|9): not valid YAML", line), line


def test_yaml_indentation_error(tmp_path):
    path = write(tmp_path, BASE + "   lr: 0.1\n")
    line = only_problem(path)
    assert line.startswith(f"{path}:") and "not valid YAML" in line
    assert re.match(rf"{re.escape(str(path))}:\d+: ", line)


@pytest.mark.parametrize("text,kind", [("- a\n- b\n", "list"), ("just a string\n", "str"),
                                       ("", "NoneType")])
def test_non_mapping_document(tmp_path, text, kind):
    path = write(tmp_path, text)
    line = only_problem(path)
    assert line.startswith(str(path))
    assert "a spec is a YAML mapping" in line and kind in line


def test_spec_file_does_not_exist(tmp_path):
    missing = tmp_path / "nope.yaml"
    line = only_problem(missing)
    assert "spec file not found" in line and str(missing) in line


# --- several problems at once; file:line ----------------------------------------------------------

def test_all_problems_reported_at_once(tmp_path):
    path = write(tmp_path, BASE.replace("epochs: 2", "epochs: 0").replace("[full]", "[froze]")
                 + "fractions: [1.5]\n")
    problems = problems_of(path)
    assert len(problems) == 3, problems
    joined = "\n".join(problems)
    assert "finetune.epochs" in joined and "protocols.0" in joined and "fractions" in joined
    by_field = {}
    for p in problems:
        m = re.match(rf"{re.escape(str(path))}:(\d+): (\S+):", p)
        assert m, f"no file:line: field: {p!r}"
        by_field[m.group(2)] = int(m.group(1))
    assert by_field == {"finetune.epochs": LINE["finetune.epochs"],
                        "protocols.0": LINE["protocols"], "fractions": 8}
    # The exception's own message lists them all too.
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "3 problems" in str(info.value)


def test_plugin_and_structure_problems_together(tmp_path):
    """An unknown method (close match) is reported along with broken fields."""
    path = write(tmp_path, BASE.replace("[scratch]", "[scrach]").replace("epochs: 2", "epochs: x")
                 .replace("name: base", "name: 'a b'"))
    problems = problems_of(path)
    assert len(problems) == 3, problems
    assert any("did you mean 'scratch'?" in p for p in problems)
    assert any(p.startswith(at_line(path, LINE["finetune.epochs"]) + "finetune.epochs") for p in problems)
    assert any(p.startswith(at_line(path, LINE["name"]) + "name:") for p in problems)


def test_dataset_and_method_settings_problems_together(tmp_path):
    text = BASE.replace("dataset: synthetic", "dataset:\n  name: synthetic\n  image_size: 8\n"
                        "  folds: 1").replace("methods: [scratch]",
                                              "methods:\n  supervised:\n    wieghts: x")
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert len(problems) == 3, problems
    assert any(p.startswith(at_line(path, 4) + "dataset.image_size") for p in problems)
    assert any(p.startswith(at_line(path, 5) + "dataset.folds") for p in problems)
    assert any(p.startswith(at_line(path, 8) + "methods.supervised.wieghts") for p in problems)


def test_missing_key_has_file_but_no_line(tmp_path):
    path = write(tmp_path, BASE.replace("dataset: synthetic\n", ""))
    problems = problems_of(path)
    line = next(p for p in problems if "dataset:" in p)
    assert line.startswith(f"{path}: dataset: required field is missing")


# --- --set overrides ----------------------------------------------------------------------------

def test_apply_overrides_parses_yaml_values():
    data = {"name": "x", "finetune": {"epochs": 2}, "seeds": [0, 1]}
    out = apply_overrides(data, ["finetune.epochs=3", "finetune.lr=0.0001", "finetune.amp=false",
                                 "seeds=[3, 4]", "metric.name=bpq", "description=a=b"])
    assert out["finetune"]["epochs"] == 3 and isinstance(out["finetune"]["epochs"], int)
    assert out["finetune"]["lr"] == pytest.approx(1e-4)
    assert out["finetune"]["amp"] is False
    assert out["seeds"] == [3, 4]
    assert out["metric"] == {"name": "bpq"}  # created
    assert out["description"] == "a=b"  # only the first '=' splits
    assert data == {"name": "x", "finetune": {"epochs": 2}, "seeds": [0, 1]}  # input untouched


def test_apply_overrides_list_index():
    out = apply_overrides({"seeds": [0, 1]}, ["seeds.1=7"])
    assert out["seeds"] == [0, 7]
    with pytest.raises(SpecError, match="out of range"):
        apply_overrides({"seeds": [0, 1]}, ["seeds.5=7"])


def test_apply_overrides_through_a_scalar():
    with pytest.raises(SpecError) as info:
        apply_overrides({"name": "x"}, ["name.first=y"])
    assert "'name' is not a mapping" in str(info.value)


def test_load_spec_with_overrides(tmp_path):
    path = write(tmp_path, BASE)
    rspec = load_spec(path, overrides=["finetune.epochs=3", "fractions=[0.5, 1.0]",
                                       "dataset.images_per_fold=12"])
    assert rspec.spec.finetune.epochs == 3
    assert rspec.spec.fractions == [0.5, 1.0]
    assert rspec.dataset_config.images_per_fold == 12
    assert rspec.overrides == ["finetune.epochs=3", "fractions=[0.5, 1.0]",
                               "dataset.images_per_fold=12"]


def test_overrides_reach_into_short_forms(tmp_path):
    """`dataset: NAME` and `methods: [a, b]` are short forms; --set must reach into them."""
    path = write(tmp_path, BASE.replace("[scratch]", "[scratch, supervised]"))
    rspec = load_spec(path, overrides=["dataset.image_size=96", "methods.supervised.weights=w.pth",
                                       "finetune.lr=1e-4"])
    assert rspec.spec.dataset.name == "synthetic"
    assert rspec.dataset_config.image_size == 96
    assert list(rspec.method_configs) == ["scratch", "supervised"]
    assert str(rspec.method_configs["supervised"].weights) == "w.pth"
    assert rspec.spec.finetune.lr == pytest.approx(1e-4)


def test_bad_override_is_a_spec_problem(tmp_path):
    path = write(tmp_path, BASE)
    line = only_problem(path, overrides=["finetune.epochs=abc"])
    assert "finetune.epochs:" in line and "'abc'" in line and "integer" in line


def test_override_key_typo_is_reported(tmp_path):
    line = only_problem(write(tmp_path, BASE), overrides=["finetune.epocs=3"])
    assert "finetune.epocs: unknown key" in line and "did you mean 'epochs'?" in line


@pytest.mark.parametrize("override,expected", [
    ("noequals", "expected KEY.PATH=VALUE"),
    ("=3", "empty key path"),
    ("..=3", "empty key path"),
])
def test_malformed_override(tmp_path, override, expected):
    line = only_problem(write(tmp_path, BASE), overrides=[override])
    assert f"--set {override!r}" in line
    assert expected in line


def test_method_rows_can_alias_a_plugin(tmp_path):
    spec = load_spec(write(tmp_path, """
name: alias
dataset: synthetic
methods:
  random_a: {method: scratch}
  imagenet: {method: supervised, weights: /x/r18.pth}
"""))
    assert spec.spec.plugin_of("random_a") == "scratch"
    assert spec.spec.plugin_of("imagenet") == "supervised"
    assert str(spec.method_configs["imagenet"].weights) == "/x/r18.pth"
    assert spec.resolved()["methods"]["imagenet"]["method"] == "supervised"


def test_alias_to_unknown_plugin_names_the_method_key(tmp_path):
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, """
name: alias
dataset: synthetic
methods:
  mine: {method: scrach}
"""))
    assert "methods.mine.method" in str(err.value) and "did you mean 'scratch'" in str(err.value)
