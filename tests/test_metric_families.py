"""Metric families are plugins: the built-in ``pq`` and ``dice`` register through the same hook
a third party uses, compute exactly what the metric functions compute, and answer the headline
and like-for-like questions that records, validation and reports ask."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from harness.errors import PluginError
from harness.metrics import evaluate_dice, evaluate_segmentation
from harness.plugins import build_registry
from harness.runner import headline_value


@pytest.fixture(scope="module")
def registry():
    return build_registry()


def toy_arrays(n: int = 5, size: int = 24, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, k + 1, (n, size, size)).astype(np.uint8)
    instances = (classes > 0) * rng.integers(1, 4, (n, size, size)).astype(np.int32)
    return SimpleNamespace(classes=classes, instances=instances,
                           tissues=[f"t{i % 2}" for i in range(n)]), rng


def test_builtin_families_are_registered_as_plugins(registry):
    assert {"pq", "dice"} <= set(registry.metric_families)
    for name in ("pq", "dice"):
        info = registry.metric_families[name]
        assert info.distribution == "pathbench-harness" and info.entry_point == name
    assert registry.metric_family("pq").metric_names == ("mpq", "bpq")
    assert registry.metric_family("pq").default_metric == "mpq"
    assert registry.metric_family("dice").variants == ()
    with pytest.raises(PluginError, match="metric family plugin 'pqq' is not installed .did you "
                       "mean 'pq'..; installed metric families: dice, pq"):
        registry.metric_family("pqq")


def test_compute_is_exactly_the_metric_functions(registry):
    """What the evaluate stage writes as metrics.json is byte for byte what it wrote before."""
    arrays, rng = toy_arrays()
    rows = np.array([4, 0, 2], dtype=np.int64)
    pred = rng.integers(0, 4, (3, 24, 24)).astype(np.uint8)
    names = ["a", "b", "c"]
    pq = registry.metric_family("pq").compute(pred, arrays, rows, names)
    before = evaluate_segmentation(pred, arrays.classes[rows], arrays.instances[rows],
                                   [arrays.tissues[r] for r in rows], names)
    assert json.dumps(pq) == json.dumps(before)
    dice = registry.metric_family("dice").compute(pred, arrays, rows, names)
    assert json.dumps(dice) == json.dumps({"dice": evaluate_dice(pred, arrays.classes[rows])})


def test_headline_and_like_for_like(registry):
    metrics = {"instance": {"mpq": 0.5, "bpq": 0.6}, "thesis": {"mpq": 0.4, "bpq": 0.45}}
    assert headline_value(registry, metrics, "bpq", "thesis") == 0.45
    assert headline_value(registry, {"dice": {"dice": 0.8, "per_image": [0.8]}}, "dice", "instance") == 0.8
    assert registry.family_of_metric("mpq").name == "pq"
    assert registry.family_of_metric("nope") is None
    assert registry.like_for_like("pq") == ("mpq", "thesis")
    assert registry.like_for_like("dice") == ("dice", None)
    assert registry.like_for_like("f1") is None
    assert registry.metric_family("dice").variant_of("thesis") is None
    assert registry.metric_family("pq").variant_of("thesis") == "thesis"


# --- a third party's family -----------------------------------------------------------------

class _Accuracy:
    """A family written against the contract alone (duck-typed, as an outside package may)."""

    name = "toyacc"
    metric_names = ("acc",)
    variants = ()
    like_for_like = {"accuracy": ("acc", None)}

    def compute(self, pred, arrays, rows, class_names):
        return {"acc": {"acc": float((pred == np.asarray(arrays.classes[rows])).mean())}}

    def headline(self, metrics, name, variant):
        return metrics["acc"][name]


def _toy_plugins():
    from harness.hookspecs import hookimpl
    from harness_builtin.datasets.synthetic import SyntheticDataset

    class ToyDataset(SyntheticDataset):
        name = "toyacc_synth"
        metric_family = "toyacc"

    class Plugins:
        @hookimpl
        def harness_register_metric_families(self):
            return [_Accuracy]

        @hookimpl
        def harness_register_datasets(self):
            return [ToyDataset]

    return Plugins()


SPEC = "name: t\ndataset: toyacc_synth\nmethods: [scratch]\nprotocols: [full]\n" \
       "finetune: {epochs: 1, batch_size: 2}\n"


def test_a_third_party_family_validates_and_reads_back(tmp_path):
    from harness.errors import SpecError
    from harness.spec import load_spec

    registry = build_registry(extra_plugins=[_toy_plugins()])
    assert registry.metric_families["toyacc"].distribution == "local"
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC + "metric: {name: acc}\n")
    assert load_spec(path, registry=registry).spec.metric.name == "acc"
    assert registry.family_of_metric("acc").headline({"acc": {"acc": 0.7}}, "acc", None) == 0.7
    assert registry.like_for_like("accuracy") == ("acc", None)
    for name, expected in (("mpq", "'mpq' does not apply to dataset 'toyacc_synth' (metric "
                                   "family toyacc); allowed: acc"),
                           ("ac", "unknown metric 'ac' (did you mean 'acc'?); allowed: acc")):
        path.write_text(SPEC + f"metric: {{name: {name}}}\n")
        with pytest.raises(SpecError) as info:
            load_spec(path, registry=registry)
        assert expected in str(info.value)


def test_unknown_pq_variant_is_a_problem_with_suggestion(tmp_path):
    from harness.errors import SpecError
    from harness.spec import load_spec

    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.replace("toyacc_synth", "synthetic") + "metric: {pq_variant: thesys}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path, registry=build_registry())
    assert "metric.pq_variant: unknown variant 'thesys' of metric family pq (did you mean " \
           "'thesis'?); allowed: instance, thesis" in str(info.value)
