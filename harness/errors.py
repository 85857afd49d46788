"""Errors a user can fix, each with the process exit code the CLI returns for it.

The CLI prints ``error: <message>`` on one line and exits with ``exit_code``; a traceback is
shown only with ``--debug``.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class HarnessError(Exception):
    """Base class: a problem the user can act on. The message must name the file/field and the fix."""

    exit_code = 1


class SpecError(HarnessError):
    """An invalid spec (exit 2). ``problems`` holds one line per problem."""

    exit_code = 2

    def __init__(self, problems: list[str] | str, source: str | None = None):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = prefix + self.problems[0]
        else:
            message = f"{prefix}{len(self.problems)} problems:\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(message)


class UsageError(HarnessError):
    """A bad option, argument or environment setting of a command (exit 2)."""

    exit_code = 2


class DataError(HarnessError):
    """Data (or weights) missing or corrupt (exit 3)."""

    exit_code = 3


class NoSamples(DataError):
    """A dataset's source holds no samples (exit 3); ``harness data prepare`` names the source."""


class PluginError(HarnessError):
    """A plugin is missing, duplicated or broken (exit 4)."""

    exit_code = 4


class MissingInputs(DataError):
    """Every weights file and dataset a spec needs that is missing (exit 3); ``problems``: the
    lines to print (a heading, then one per missing input with its fix; just the one line when
    one input is missing)."""

    def __init__(self, missing: list[str]):
        self.missing = list(missing)
        n = len(self.missing)
        # one missing input stays the one-line error it always was
        self.problems = self.missing if n == 1 else [
            f"{n} inputs missing (nothing was run); fix each, then run again:",
            *[f"  - {m}" for m in self.missing]]
        super().__init__("\n".join(self.problems))


class StagesFailed(HarnessError):
    """Stages computed by workers or jobs failed (the others finished and are kept). The exit
    code is the failed stages' own (2, 3, 4, or 1 for a bug); a summary line per stage."""

    def __init__(self, summary: str, codes: list[int]):
        super().__init__(summary)
        known = [c for c in codes if c in (2, 3, 4)]
        self.exit_code = max(known) if known and len(known) == len(codes) else 1


def one_line(exc: BaseException, with_type: bool = False) -> str:
    """``exc``'s message on one line (whitespace collapsed), prefixed by its type's name when
    ``with_type`` (or when the message is empty), for an error line that wraps another."""
    message = " ".join(str(exc).split())
    if with_type or not message:
        return " ".join(f"{type(exc).__name__}: {message}".split()) if message else type(exc).__name__
    return message


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the option closest to ``name``, or an empty string."""
    close = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
