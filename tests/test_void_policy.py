"""PanNuke's void policy and the PQ variant: an unset ``void_policy`` follows
``metric.pq_variant`` (instance -> background: the official PanNuke metric; thesis -> thesis:
the thesis's numbers); an explicit value that contradicts it is rejected with its fix."""

from __future__ import annotations

import pytest

from support import write_spec
from harness.errors import SpecError
from harness.plugins import build_registry
from harness.spec import load_spec

REGISTRY = build_registry()

SPEC = """name: void
dataset: {name: DATASET}
methods: [scratch]
protocols: [full]
metric: {name: mpq}
"""


def _load(tmp_path, dataset="pannuke", policy=None, variant=None, overrides=()):
    text = SPEC.replace("DATASET", dataset + (f", void_policy: {policy}" if policy else ""))
    if variant:
        text = text.replace("metric: {name: mpq}", f"metric: {{name: mpq, pq_variant: {variant}}}")
    return load_spec(write_spec(tmp_path, text), list(overrides), registry=REGISTRY)


@pytest.mark.parametrize("dataset", ["pannuke", "pannuke_breast"])
@pytest.mark.parametrize("variant, policy", [(None, "background"), ("instance", "background"),
                                             ("thesis", "thesis")])
def test_unset_void_policy_follows_the_variant(tmp_path, dataset, variant, policy):
    rspec = _load(tmp_path, dataset, variant=variant)
    assert rspec.dataset_config.void_policy == policy
    assert rspec.resolved()["dataset"]["void_policy"] == policy  # records show what was used


def test_the_resolved_default_keys_like_the_explicit_value(tmp_path):
    """Specs that wrote the consistent value keep their stage keys (same fingerprint)."""
    cls = REGISTRY.datasets["pannuke"].cls
    implicit = _load(tmp_path, variant="thesis").dataset_config
    explicit = _load(tmp_path, policy="thesis", variant="thesis").dataset_config
    assert cls(implicit, root=tmp_path).fingerprint() == cls(explicit, root=tmp_path).fingerprint()


@pytest.mark.parametrize("policy, variant, fix", [
    ("thesis", "instance", "set void_policy: background, or metric.pq_variant: thesis"),
    ("thesis", None, "set void_policy: background, or metric.pq_variant: thesis"),
    ("background", "thesis", "set void_policy: thesis, or metric.pq_variant: instance"),
])
def test_a_contradicting_pair_is_rejected_with_its_fix(tmp_path, policy, variant, fix):
    with pytest.raises(SpecError) as err:
        _load(tmp_path, policy=policy, variant=variant)
    lines = [p for p in err.value.problems if "void_policy" in p]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "dataset.void_policy" in lines[0] and fix in lines[0] and "official PanNuke" in lines[0]


def test_a_set_override_is_checked_too(tmp_path):
    with pytest.raises(SpecError, match="contradicts metric.pq_variant 'thesis'"):
        _load(tmp_path, variant="thesis", overrides=["dataset.void_policy=background"])
    assert _load(tmp_path, variant="thesis", overrides=["metric.pq_variant=instance",
                                                        "dataset.void_policy=background"])
