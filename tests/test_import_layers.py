"""The house's import rules (ARCHITECTURE.md), read from the source with `ast`, not by importing:
every `import` counts, inside functions too (a lazy import that dodges a circle is still one);
only `if TYPE_CHECKING:` blocks are left out.

- no circle among the project's modules;
- `gpu_runner` imports nothing of the project, and nothing inside a function (a lazy
  `from transformers import AutoConfig` raced under concurrent requests);
- the SDK and the cookbook import nothing of the server;
- inside `training`: intake and execution may import dispatch, dispatch imports neither, only the
  actors (inside execution) and management commands import execution, nothing at the top of
  `training` imports a stage, and upkeep never imports execution; api/ and front/ never import
  execution.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source roots and the top-level names each one holds
SOURCE_ROOTS = {ROOT: ("gpu_runner", "cookbook"), ROOT / "platform": None, ROOT / "sdk_python": ("lorasmith",)}
SERVER_PACKAGES = {"accounts", "api", "front", "training", "lorasmith_server", "gpu_runner"}


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules = {}
    for root, packages in SOURCE_ROOTS.items():
        tops = packages or [p.name for p in root.iterdir() if (p / "__init__.py").exists()]
        for top in tops:
            for path in (root / top).rglob("*.py"):
                if "migrations" not in path.parts:
                    modules[_module_name(root, path)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                yield from _import_nodes(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _import_nodes(node)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the submodule mod; `from mod import name` imports mod
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_every_part(graph):
    tops = {name.split(".")[0] for name in graph}
    assert {"gpu_runner", "lorasmith", "training", "api", "accounts", "lorasmith_server"} <= tops
    assert {"training.dispatch", "training.intake.training_requests", "training.execution.cycle"} <= graph.keys()
    assert "training.dispatch" in graph["training.intake.training_requests"]  # relative imports resolve


def test_no_import_circles(graph):
    assert _cycles(graph) == []


def test_a_circle_would_be_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _edges(graph, source_prefix: str, target_prefix: str) -> list[tuple[str, str]]:
    return sorted(
        (m, t)
        for m, targets in graph.items()
        if m == source_prefix or m.startswith(source_prefix + ".")
        for t in targets
        if t == target_prefix or t.startswith(target_prefix + ".")
    )


def test_the_engine_imports_nothing_of_the_project(graph):
    offending = [
        (m, t)
        for m, targets in graph.items()
        if m.startswith("gpu_runner")
        for t in targets
        if not t.startswith("gpu_runner")
    ]
    assert offending == []


@pytest.mark.parametrize("client", ["lorasmith", "cookbook"])
def test_clients_import_nothing_of_the_server(graph, client):
    offending = [
        (m, t)
        for m, targets in graph.items()
        if m.split(".")[0] == client
        for t in targets
        if t.split(".")[0] in SERVER_PACKAGES
    ]
    assert offending == []


def test_dispatch_imports_no_stage(graph):
    assert _edges(graph, "training.dispatch", "training.intake") == []
    assert _edges(graph, "training.dispatch", "training.execution") == []
    assert _edges(graph, "training.dispatch", "training.upkeep") == []


def test_only_actors_and_commands_import_execution(graph):
    importers = {
        m
        for m, targets in graph.items()
        if any(t.startswith("training.execution") for t in targets) and not m.startswith("training.execution")
    }
    assert all(".management.commands." in m for m in importers), importers


def test_the_shared_top_of_training_imports_no_stage(graph):
    top = [
        m
        for m in graph
        if m.startswith("training.")
        and m.count(".") == 1
        and m not in ("training.dispatch",)
        and not m.startswith("training.management")
    ]
    for stage in ("training.intake", "training.execution", "training.upkeep", "training.dispatch"):
        offending = [(m, t) for m in top for t in graph[m] if t.startswith(stage)]
        assert offending == [], offending


def test_upkeep_and_intake_never_import_execution(graph):
    assert _edges(graph, "training.upkeep", "training.execution") == []
    assert _edges(graph, "training.intake", "training.execution") == []
    assert _edges(graph, "training.upkeep", "training.intake") == []


def lazy_imports(path: Path) -> list[int]:
    """Lines of the imports inside a function body (TYPE_CHECKING blocks left out)."""
    functions = [
        n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    return sorted({node.lineno for f in functions for node in _import_nodes(f)})


def test_the_engine_imports_nothing_inside_functions():
    lazy = {
        name: lines
        for name, path in project_modules().items()
        if name.startswith("gpu_runner") and (lines := lazy_imports(path))
    }
    assert lazy == {}


def test_a_lazy_import_is_seen(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\nif TYPE_CHECKING:\n    import re\ndef f():\n    import json\n")
    assert lazy_imports(module) == [5]
