"""The layers of the code: no import cycles, and each layer imports only what is below it.

Every module of the product packages (and ops/) is imported on its own, with no other
project module loaded before it, so a module that only works when something else was
imported first fails here. The import graph is also read statically (every import
statement, at any depth of a module) to find cycles and imports across the layers.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
PACKAGES = ("eventlog", "projections", "service", "ops")
# What each product package may import from the project (architecture: service over projections over eventlog).
ALLOWED = {
    "eventlog": {"eventlog"},
    "projections": {"eventlog", "projections"},
    "service": {"eventlog", "projections", "service"},
}
WEB_AND_SCHEDULING = ("aiohttp", "apscheduler", "prometheus_client")


def module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((PROJECT / package).rglob("*.py")):
            parts = path.relative_to(PROJECT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imports_of(module: str) -> set[str]:
    """The modules and packages `module` names in its import statements."""
    path = PROJECT / Path(*module.split("."))
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def project_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (`from a import b` counts as a.b when b is a module)."""
    names = set(module_names())
    return {m: {i for i in imports_of(m) if i in names and i != m} for m in names}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    graph = project_graph()
    assert len(graph) > 60
    assert cycles(graph) == []


def test_a_cycle_would_be_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def imports_from(package: str, top_levels: set[str]) -> set[tuple[str, str]]:
    """(module, what it imports) for the modules of `package` importing from these top-level packages."""
    return {
        (module, imported)
        for module in module_names()
        if module.split(".")[0] == package
        for imported in imports_of(module)
        if imported.split(".")[0] in top_levels
    }


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below(package):
    assert imports_from(package, {*PACKAGES, "tests"} - ALLOWED[package]) == set()


@pytest.mark.parametrize("package", ["eventlog", "projections"])
def test_the_lower_layers_know_no_http_scheduler_or_metrics(package):
    assert imports_from(package, set(WEB_AND_SCHEDULING)) == set()


@pytest.mark.parametrize("module", module_names())
def test_each_module_imports_on_its_own(module):
    loaded = {name: mod for name, mod in sys.modules.items() if name.split(".")[0] in PACKAGES}
    for name in loaded:
        del sys.modules[name]
    try:
        importlib.import_module(module)
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] in PACKAGES]:
            del sys.modules[name]
        sys.modules.update(loaded)
