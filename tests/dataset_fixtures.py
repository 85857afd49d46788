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


def assert_prepare_fails_in_one_line(ds: Any, source: Path, needle: str) -> None:
    """``ds.prepare(source)`` raises a one-line DataError naming ``needle`` (the bad file) and
    leaves nothing behind: no cache, no half-written folder beside it."""
    from harness.errors import DataError

    with pytest.raises(DataError) as exc:
        ds.prepare(source)
    msg = str(exc.value)
    assert "\n" not in msg and needle in msg, msg
    assert not ds.is_prepared() and not ds.root.exists()
    cache = ds.root.parent
    assert not cache.exists() or list(cache.iterdir()) == []  # no half-written folder left


def assert_interrupted_prepare_leaves_nothing(ds: Any, source: Path, monkeypatch: Any, module: Any,
                                              name: str, call: int) -> None:
    """``ds.prepare(source)`` stopped by Ctrl-C in the ``call``-th call of ``module.name``
    leaves no cache and nothing beside it."""
    real, calls = getattr(module, name), []

    def interrupt(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(module, name, interrupt)
    with pytest.raises(KeyboardInterrupt):
        ds.prepare(source)
    assert not ds.is_prepared() and not ds.root.exists()
    assert list(ds.root.parent.iterdir()) == []
