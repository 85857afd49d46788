"""``example_fm``: a foundation model registered as data, for the built-in ``foundation`` method.

Nothing but a hook returning the entries of this package's YAML file; the harness validates
each entry (:class:`harness.models.foundation.FoundationModel`) and lists it in
``harness show method foundation``.
"""

from __future__ import annotations

from pathlib import Path

from harness.hookspecs import hookimpl
from harness.models.foundation import read_entries


@hookimpl
def harness_register_foundation_models():
    return read_entries(Path(__file__).with_name("foundation_models.yaml"))
