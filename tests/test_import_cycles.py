"""harness/ has no import cycle among its modules (module-level imports; imports inside
functions are deliberate late imports and do not count). Importing ``a.b.c`` runs ``a`` and
``a.b`` first, so an import depends on those packages too, except on the importer's own
packages (they are already being initialised when it runs)."""

from __future__ import annotations

import ast
from pathlib import Path

from support import REPO

ROOT = REPO / "harness"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _top_level_imports(tree: ast.Module):
    """Import statements executed when the module is imported (not inside functions)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        else:
            stack.extend(n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt))


def _targets(name: str, path: Path, node: ast.AST, modules: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        wanted = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        wanted = [base] + [f"{base}.{a.name}" for a in node.names]
    found = set()
    for target in wanted:
        while target and target not in modules:  # `import a.b.c` of a non-module attribute
            target = target.rpartition(".")[0]
        found |= {".".join(target.split(".")[:i + 1]) for i in range(target.count(".") + 1)}
    own = {".".join(name.split(".")[:i + 1]) for i in range(name.count(".") + 1)}
    return {t for t in found if t in modules and t not in own}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        deps: set[str] = set()
        for node in _top_level_imports(tree):
            deps |= _targets(name, path, node, modules)
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_harness_has_no_import_cycle():
    graph = import_graph()
    assert "harness.planner" in graph and "harness.plan" in graph["harness.planner"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
