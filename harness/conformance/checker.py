"""Recording the findings of one plugin's checks (see :mod:`harness.conformance`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Failure:
    plugin: str  # "method 'x' (from dist 1.0)"
    item: str  # the contract item: "kind", "training_step", "verify", ...
    problem: str  # what is wrong and how to fix it

    def __str__(self) -> str:
        return f"FAIL {self.plugin}: {self.item}: {self.problem}"


@dataclass
class Report:
    name: str
    failures: list[Failure]
    passed: list[str]  # contract items that passed
    debug: bool = False  # print tracebacks of plugin exceptions to stderr

    @property
    def ok(self) -> bool:
        return not self.failures


def fixture_of(cls: type, folder: Path) -> dict[str, Any]:
    """The plugin's ``conformance_fixture(folder)``, or ``{}``."""
    hook = getattr(cls, "conformance_fixture", None)
    if hook is None:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    return dict(hook(folder) or {})


class Stop(Exception):
    """A check failed; the smoke test of this plugin cannot go on."""


class Checker:
    def __init__(self, info: Any, report: Report, who: str):
        self.info, self.report, self.who = info, report, who

    def fail(self, item: str, problem: str) -> Stop:
        self.report.failures.append(Failure(self.who, item, problem))
        return Stop()

    def call(self, item: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args)``; an exception is a failure of contract item ``item``."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - plugin code: any exception is a finding
            if self.report.debug:
                import sys
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
            raise self._failure(item, exc) from exc

    def _failure(self, item: str, exc: Exception) -> Stop:
        if isinstance(exc, NotImplementedError):
            return self.fail(item, f"raised NotImplementedError{': ' + str(exc) if str(exc) else ''}"
                             f"; implement {self.info.cls.__name__}.{item}")
        message = " ".join(str(exc).split())[:300]
        return self.fail(item, f"raised {type(exc).__name__}: {message or '(no message)'}; "
                         f"fix {item} (`harness plugin check {self.info.name} --debug` shows "
                         f"the traceback)")

    def passed(self, item: str) -> None:
        self.report.passed.append(item)
