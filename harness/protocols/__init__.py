"""Protocols: how a cell turns an encoder into an evaluated model (``frozen``, ``full``,
``linear``, or a plugin's). Each is a class registered through the
``harness_register_protocols`` hook, as methods are; see :mod:`harness.protocols.base`."""

from __future__ import annotations

from typing import Any


def check_protocol_name(name: str, info: Any) -> str:
    """A spec's protocol name, checked against the installed protocols (a ValueError naming
    them otherwise); used by the spec models' validation, whose pydantic validation context
    (``info.context``) holds the registry (``{"registry": ...}``, :func:`harness.spec.load_spec`)."""
    from harness.errors import did_you_mean

    registry = (info.context or {}).get("registry")
    if registry is None:  # a caller's mistake, not a spec problem: not a ValueError
        raise TypeError("spec models validated without a plugin registry: pass "
                        "context={'registry': registry} to model_validate")
    known = registry.protocols
    if name not in known:
        raise ValueError(f"unknown protocol {name!r}{did_you_mean(name, known)}; installed "
                         f"protocols: {', '.join(repr(k) for k in sorted(known)) or 'none'}")
    return name
