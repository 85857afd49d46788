"""What every built-in dataset plugin says about itself without data (no prepared cache, a root
that does not exist): its class attributes, folds and group sizes, where to download it, and
which settings are load-time options (one prepared cache, other stage fingerprints). Preparing,
verifying and loading each from a fixture is the conformance kit's (tests/test_conformance.py)
and each dataset's own test module's."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.data.base import Dataset
from harness.plugins import get_registry

PANNUKE_CLASSES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
KFOLD = ["fold1", "fold2", "fold3"]

#: name -> (labeled, class names, metric family, split scheme, magnification, folds, expected
#: group sizes, words of the source hint, load-time options)
EXPECTED = {
    "pannuke": (True, PANNUKE_CLASSES, "pq", "kfold", "40x", KFOLD,
                {"fold1": 2656, "fold2": 2523, "fold3": 2722}, ("fold_1.zip", "warwick"),
                {"void_policy": "background"}),
    "pannuke_breast": (True, PANNUKE_CLASSES, "pq", "fixed", "40x", ["test"],
                       {"train": 1692, "val": 188, "test": 471}, ("warwick",),
                       {"void_policy": "background"}),
    "lizard": (True, ("neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil",
                      "connective"), "pq", "kfold", "20x", KFOLD, None, ("lizard_labels.zip",),
               {"thesis_bgr_swap": False, "aggregate_by_source": True}),
    "tnbc": (True, ("nucleus",), "dice", "fixed", None, ["test"], {"train": 43, "test": 7},
             ("zenodo",), {"split": "patient"}),
    "tcga": (False, (), "none", "none", "40x", [], None, ("portal.gdc.cancer.gov", "[wsi]"), {}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dataset_identity(name):
    labeled, classes, family, scheme, magnification, folds, sizes, hint, options = EXPECTED[name]
    cls = get_registry().datasets[name].cls
    config = cls.Config()
    # what is known without the data is asked of the class
    assert issubclass(cls, Dataset) and cls.name == name and cls.labeled is labeled
    assert cls.class_names == classes and (not labeled or cls.num_classes == len(classes) + 1)
    assert (cls.metric_family, cls.split_scheme) == (family, scheme)
    if magnification is not None:
        assert cls.magnification == magnification
    assert cls.folds(config) == folds and cls.expected_group_sizes(config) == sizes
    assert all(word in cls.source_hint.lower() for word in hint), cls.source_hint
    assert not cls.auto_prepare
    module = __import__(cls.__module__, fromlist=["harness_register_datasets"])
    assert module.harness_register_datasets() == [cls]
    if options:  # load-time options: one prepared cache, other stage fingerprints
        other = cls.Config(**options)
        assert cls.cache_identity(other) == cls.cache_identity(config)
        assert cls(other, Path("/nonexistent")).fingerprint() != \
            cls(config, Path("/nonexistent")).fingerprint()


def test_every_builtin_dataset_is_listed():
    builtins = {n for n, info in get_registry().datasets.items()
                if info.cls.__module__.startswith("harness_builtin.")}
    assert builtins == set(EXPECTED) | {"synthetic"}  # synthetic: tests/test_synthetic_dataset.py
