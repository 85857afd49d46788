"""Fixtures every dataset test module builds the same way: ``make(root, **config)``, the tiny
source in the official layout (module-scoped) and a dataset prepared from it (module-scoped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest


def dataset_fixtures(cls: Any, write_source: Callable[[Path], Path], source_name: str = "source",
                     **defaults: Any) -> tuple[Callable[..., Any], Any, Any]:
    """``(make, source fixture, prepared fixture)`` for dataset class ``cls``; the source fixture
    is named ``source_name``, ``write_source(folder)`` writes it and returns the path to prepare
    from; ``defaults`` are config settings of every ``make`` (and of ``prepared``)."""

    def make(root: Path | str, **cfg: Any) -> Any:
        return cls(cls.Config(**{**defaults, **cfg}), Path(root))

    @pytest.fixture(scope="module", name=source_name)
    def source(tmp_path_factory) -> Path:
        return write_source(tmp_path_factory.mktemp(f"{cls.name}_src"))

    @pytest.fixture(scope="module", name="prepared")
    def prepared(request, tmp_path_factory) -> Any:
        ds = make(tmp_path_factory.mktemp(f"{cls.name}_cache") / cls.name)
        ds.prepare(request.getfixturevalue(source_name))
        return ds

    return make, source, prepared
