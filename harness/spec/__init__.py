"""Specs: pydantic models (``extra="forbid"``), YAML loading, ``--set`` overrides and validation.

Validation reports every problem at once, each as ``file:line: field.path: what is wrong (got X;
allowed: ...; did you mean ...?)``. Structural problems come from pydantic; cross-field problems
(unknown plugins, a protocol a method does not support, folds the dataset does not have, a batch
larger than the training set a fraction leaves...) are checked against the installed plugins,
without touching data or starting any work.

One module per concern:

* :mod:`~harness.spec.models` -- the pydantic models and :class:`ResolvedSpec`;
* :mod:`~harness.spec.source` -- YAML with the line of every key, duplicate keys, ``--set`` origins;
* :mod:`~harness.spec.overrides` -- ``--set KEY.PATH=VALUE``;
* :mod:`~harness.spec.problems` -- placing and wording problems (``file:line: path: ...``);
* :mod:`~harness.spec.values` -- names that become paths, ``output``, number ranges;
* :mod:`~harness.spec.checks` -- plugin names and each plugin's own settings, folds, methods' own checks;
* :mod:`~harness.spec.cross` -- cross-field checks, asked of the plugin classes;
* :mod:`~harness.spec.load` -- :func:`load_spec`, which runs them all.
"""

from harness.spec.load import load_spec, settings_checks
from harness.spec.models import (ROW_KEYS, DatasetRef, FinetuneSettings, MetricSettings, Protocol,
                                 ResolvedSpec, RowSettings, Spec)
from harness.spec.overrides import apply_overrides
from harness.spec.problems import format_errors, lenient, printable, where
from harness.spec.source import duplicate_keys, mark_overrides, read_yaml, too_deep
from harness.spec.values import (MAX_INT, OUTPUT_FIELDS, SAFE_HINT, SAFE_NAME, SEED_RANGE,
                                 name_problems, number_problems, output_problems)

__all__ = [
    "MAX_INT", "OUTPUT_FIELDS", "ROW_KEYS", "SAFE_HINT", "SAFE_NAME", "SEED_RANGE", "DatasetRef",
    "FinetuneSettings", "MetricSettings", "Protocol", "ResolvedSpec", "RowSettings", "Spec",
    "apply_overrides", "duplicate_keys", "format_errors", "lenient", "load_spec",
    "mark_overrides", "name_problems", "number_problems", "output_problems", "printable",
    "read_yaml", "settings_checks", "too_deep", "where",
]
