"""The ``num_workers`` setting's type: a count 0-256 or ``auto`` (resolved by
:func:`harness.engine.runtime.resolve_num_workers`); one error message either way."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BeforeValidator


def _check(value: Any) -> Any:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 256:
        raise ValueError(f"must be 'auto' or a count from 0 to 256, got {value!r}")
    return value


WorkerCount = Annotated[Union[int, str], BeforeValidator(_check)]
