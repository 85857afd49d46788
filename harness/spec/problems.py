"""Problems of a spec, each one line: ``file:line: field.path: what is wrong (got X; allowed:
...; did you mean ...?)``. Validation collects them all and raises them at once; these are the
helpers that place and word them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from harness.errors import did_you_mean


def where(source: str, lines: dict[tuple, Any], loc: tuple) -> str:
    """``file:line`` of the longest known prefix of ``loc``, or the ``--set`` that gave it
    (``file:line (--set ...)`` where a ``--set`` reached inside that line's value)."""
    for n in range(len(loc), 0, -1):
        line = lines.get(tuple(loc[:n]))
        if isinstance(line, str):
            return line
        if isinstance(line, tuple):
            return f"{source}:{line[0]} ({line[1]})"
        if line is not None:
            return f"{source}:{line}"
    return source


def printable(text: str) -> str:
    """``text`` with control characters escaped (a name holding ESC [2J must not clear the
    screen when echoed)."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))


def lenient(model: type[BaseModel], data: dict[str, Any], exc: Exception,
            context: dict[str, Any] | None = None) -> Any:
    """``model`` validated (with validation ``context``) without the top-level fields that
    failed (their defaults instead), so that the checks of the other fields still run; None if
    that fails too."""
    broken = {e["loc"][0] for e in exc.errors() if e["loc"]} if isinstance(exc, ValidationError) else set()
    try:
        return model.model_validate({k: v for k, v in data.items() if k not in broken},
                                    context=context)
    except ValidationError:
        return None


def _fmt_value(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the last element of ``loc`` (for did-you-mean on keys)."""
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        f = current.model_fields.get(part)
        if f is None:
            return None
        ann = f.annotation
        current = next((a for a in getattr(ann, "__args__", (ann,))
                        if isinstance(a, type) and issubclass(a, BaseModel)), ann)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def format_errors(exc: ValidationError, model: type[BaseModel], source: str,
                  lines: dict[tuple, Any], prefix: tuple = ()) -> list[str]:
    """One problem line per pydantic error of ``model`` (validated at ``prefix`` of the spec):
    unknown keys with the allowed ones, literals with a did-you-mean."""
    problems = []
    for err in exc.errors():
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        full = prefix + loc
        path = ".".join(str(x) for x in full) or "(top level)"
        at = where(source, lines, full)
        etype = err["type"]
        if etype == "extra_forbidden":
            owner = _model_at(model, loc)
            allowed = sorted(owner.model_fields) if owner else []
            hint = did_you_mean(str(loc[-1]), allowed)
            problems.append(f"{at}: {path}: unknown key{hint}; allowed keys: "
                            f"{', '.join(allowed) or '(none: it takes no settings)'}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = f" (got {_fmt_value(err.get('input'))})" if etype != "missing" else ""
        hint = ""
        if etype == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            options = [o.strip().strip("'") for o in expected.replace(" or ", ",").split(",")]
            hint = did_you_mean(str(err.get("input")), [o for o in options if o])
        if etype == "missing":
            msg = "required field is missing"
        problems.append(f"{at}: {path}: {msg}{got}{hint}")
    return problems
