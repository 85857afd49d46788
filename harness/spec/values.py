"""Checks of a spec's values that need no plugin: names that become paths (the spec's name,
row names, folds), the ``output`` template, and number ranges in every validated model.
"""

from __future__ import annotations

import math
import re
import string
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from harness.spec.problems import printable, where
from harness.spec.source import Lines

#: Names that become file or folder names (the spec's name, row names, folds): no separators,
#: no leading dot (so never "." or ".."), no control characters.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,99}$")
SAFE_HINT = "letters, digits and _ . + - only, not starting with a dot, at most 100 characters"
#: Placeholders an ``output:`` may use.
OUTPUT_FIELDS = ("name",)
#: Integers beyond this are typos or attacks (1e30 epochs), never settings.
MAX_INT = 2**53
SEED_RANGE = (0, 2**32 - 1)


def name_problems(data: dict[str, Any], source: str, lines: Lines) -> list[str]:
    """Names that become paths (spec name, row names, folds) and the ``output`` template."""
    problems = []

    def bad(loc: tuple, what: str, value: Any) -> None:
        problems.append(f"{where(source, lines, loc)}: {'.'.join(map(str, loc))}: {what} "
                        f"(got {printable(repr(value))}); use {SAFE_HINT}")

    name = data.get("name")
    # (the model's own pattern reports other characters; this adds "..", ".x" and the length)
    if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", name) and not SAFE_NAME.match(name):
        bad(("name",), "not usable as a folder name", name)
    methods = data.get("methods")
    rows = list(methods) if isinstance(methods, (dict, list)) else []
    for i, row in enumerate(rows):
        if isinstance(row, str) and (not SAFE_NAME.match(row) or "__" in row):
            loc = ("methods", row) if isinstance(methods, dict) else ("methods", i)
            what = "row names become record file names; no '__' (it separates cell ids)" \
                if "__" in row else "row names become record file names"
            bad(loc, what, row)
    folds = data.get("folds")
    for i, fold in enumerate(folds if isinstance(folds, list) else []):
        if isinstance(fold, str) and not SAFE_NAME.match(fold):
            bad(("folds", i), "fold names become record file names", fold)
    if folds == []:
        problems.append(f"{where(source, lines, ('folds',))}: folds: an empty list means "
                        f"nothing; leave folds out (or null) for all folds, or name some")
    output = data.get("output")
    if isinstance(output, str):
        problems.extend(output_problems(output, data.get("name"), where(source, lines, ("output",)),
                                        "output"))
    return problems


def output_problems(output: str, name: Any, at: str, what: str) -> list[str]:
    """An ``output`` template that cannot become a run folder."""
    if "\0" in output:
        return [f"{at}: {what}: contains a NUL character (got {printable(repr(output))}); "
                f"give a plain folder path"]
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(output) if f is not None]
    except ValueError as exc:
        return [f"{at}: {what}: {exc} (got {output!r}); write braces as {{{{ and }}}}, or use "
                f"{{name}}"]
    unknown = [f for f in fields if f not in OUTPUT_FIELDS]
    if unknown:
        return [f"{at}: {what}: unknown placeholder {{{printable(unknown[0])}}} (got "
                f"{printable(repr(output))}); the only placeholder is {{name}}"]
    path = Path(output.format(name=name if isinstance(name, str) else "x"))
    if path.exists() and not path.is_dir():
        return [f"{at}: {what}: {path} is an existing file, not a folder; choose another path"]
    return []


def number_problems(models: dict[tuple, Any], source: str, lines: Lines) -> list[str]:
    """Integers no setting can mean (above 2**53, from `1e30`) and seeds outside
    [0, 2**32 - 1], in every validated model (the spec's, each method's, each dataset's)."""
    problems = []
    stack = list(models.items())
    while stack:
        loc, value = stack.pop()
        if isinstance(value, BaseModel):
            stack.extend((loc + (k,), getattr(value, k)) for k in type(value).model_fields)
        elif isinstance(value, (list, tuple)):
            stack.extend((loc + (i,), v) for i, v in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            is_seed = any(p in ("seed", "seeds") for p in loc if isinstance(p, str))
            lo, hi = SEED_RANGE if is_seed else (-MAX_INT, MAX_INT)
            if not lo <= value <= hi:
                what = "a seed" if is_seed else "a setting"
                problems.append(f"{where(source, lines, loc)}: {'.'.join(map(str, loc))}: out of "
                                f"range for {what} (got {value:.3g}); allowed {lo}..{hi}")
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{where(source, lines, loc)}: {'.'.join(map(str, loc))}: must be a "
                            f"finite number (got {value})")
    return sorted(problems)
