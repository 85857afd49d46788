"""A spec's YAML source: the document, the line of every key path (for ``file:line`` in
problems), duplicate keys, documents no spec can be (too deep, self-referring aliases), and
values that came from ``--set`` rather than from a line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.errors import SpecError

#: Where a key path came from: its 1-based line, or the ``--set KEY=VALUE`` that gave it.
Lines = dict[tuple, Any]


def read_yaml(path: Path) -> tuple[Any, Lines, list[str]]:
    """The document, its key lines, and its duplicate keys (as problems)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror
        raise SpecError(f"{path}: cannot be read as a spec ({why}); give a YAML file") from None
    try:
        data = yaml.safe_load(text)
        if too_deep(data):
            raise RecursionError(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply, too large, or an alias refers to itself; a "
                        f"spec is a few levels of mappings") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec is a YAML mapping (name:, dataset:, methods:, ...), "
                        f"got {type(data).__name__}")
    return data, line_index(text), duplicate_keys(text, str(path))


def line_index(text: str) -> Lines:
    """Map each key path of a YAML document to its 1-based line."""
    index: dict[tuple, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return index

    def walk(node: Any, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                p = path + (key.value,)
                index[p] = key.start_mark.line + 1
                walk(value, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                p = path + (i,)
                index[p] = item.start_mark.line + 1
                walk(item, p)

    if root is not None:
        walk(root, ())
    return index


def duplicate_keys(text: str, source: str) -> list[str]:
    """Mapping keys given twice (YAML lets the later one win silently), with both lines."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return []
    problems: list[str] = []
    stack = [(root, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                line = key.start_mark.line + 1
                if name is not None and name in seen:
                    full = ".".join(str(p) for p in path + (name,))
                    problems.append(f"{source}:{line}: {full}: duplicate key (also on line "
                                    f"{seen[name]}); YAML would silently keep this one: keep one")
                elif name is not None:
                    seen[name] = line
                stack.append((value, path + (name,)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, path + (i,)) for i, item in enumerate(node.value))
    return sorted(problems, key=lambda p: int(p.split(":")[1]) if p.split(":")[1].isdigit() else 0)


def too_deep(data: Any, limit: int = 40, max_nodes: int = 100_000) -> bool:
    """Whether a loaded document nests deeper than ``limit``, refers to itself (an alias
    inside its own anchor) or expands to more than ``max_nodes`` values: no spec does."""
    count = 0

    def walk(node: Any, depth: int, ancestors: frozenset) -> bool:
        nonlocal count
        count += 1
        if not isinstance(node, (dict, list)):
            return False
        if depth > limit or id(node) in ancestors or count > max_nodes:
            return True
        inner = ancestors | {id(node)}
        return any(walk(v, depth + 1, inner) for v in (node.values() if isinstance(node, dict) else node))

    return walk(data, 0, frozenset())


def mark_overrides(lines: Lines, overrides: list[str]) -> None:
    """Values set with ``--set`` are reported as ``--set KEY=VALUE``, not by a spec line: the
    key path it sets, everything below it, and the keys above it that only the ``--set`` made
    (``--set methods.simclrr.lr=1`` names a row the spec does not have). A key above it that
    the spec has keeps its line, with the ``--set`` beside it (``file:12 (--set ...)``): a
    problem there (a whole-object check, a plugin name) may come from what the ``--set`` put
    inside it."""
    for item in overrides:
        key = item.split("=", 1)[0]
        parts = tuple(int(p) if p.isdigit() else p for p in key.strip().split(".") if p)
        lines.update({k: f"--set {item}" for k in [*lines, parts] if k[:len(parts)] == parts})
        for n in range(len(parts) - 1, 0, -1):
            line = lines.get(parts[:n])
            if line is None:
                lines[parts[:n]] = f"--set {item}"
            elif isinstance(line, int):
                lines[parts[:n]] = (line, f"--set {item}")
