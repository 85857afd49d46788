"""Protocols: how a cell turns an encoder into an evaluated model (``frozen``, ``full``,
``linear``, or a plugin's). Each is a class registered through the
``harness_register_protocols`` hook, as methods are; see :mod:`harness.protocols.base`."""

from __future__ import annotations


def check_protocol_name(name: str) -> str:
    """A spec's protocol name, checked against the installed protocols (a ValueError naming
    them otherwise); used by the spec models' validation."""
    from harness.plugins import did_you_mean, get_registry

    known = get_registry().protocols
    if name not in known:
        raise ValueError(f"unknown protocol {name!r}{did_you_mean(name, known)}; installed "
                         f"protocols: {', '.join(repr(k) for k in sorted(known)) or 'none'}")
    return name
