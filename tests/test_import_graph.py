"""The library's modules import one another in one direction: no cycle, not even one hidden by an import
inside a function (pipeline -> verdicts -> jobs -> queue -> pipeline was one)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cbd_core"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every cbd_core module `name` imports, at module level or inside a function: `from . import x`,
    `from .x import y`, `import cbd_core.x` (a name imported from a package counts as its submodule
    when it is one, else as the package)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "cbd_core"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "cbd_core":
                continue
            for alias in node.names:
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source)
    found.discard(name)
    return {m for m in found if m in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# cbd_core.__main__ runs the CLI when imported; the CLI tests run it as `python -m cbd_core`.
@pytest.mark.parametrize("name", sorted(set(MODULES) - {"cbd_core.__main__"}))
def test_every_module_imports(name):
    importlib.import_module(name)


def _ignoring_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ that re-exports its submodules is the package's front door, not a
    dependency of those submodules: a submodule importing a sibling goes to the sibling, so the
    edges from a package's own submodules back to that package are what Python needs to load them."""
    return {name: {m for m in edges if not (MODULES[m].name == "__init__.py" and name.startswith(m + "."))}
            for name, edges in graph.items()}


def test_the_import_graph_has_no_cycle():
    graph = _ignoring_packages({name: imports_of(name) for name in MODULES})
    assert "cbd_core.verdicts" not in graph["cbd_core.pipeline"]
    assert not any(m.startswith("cbd_core.jobs") for m in graph["cbd_core.pipeline"])
    assert not any(m.startswith("cbd_core.jobs") for m in graph["cbd_core.verdicts"])
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
