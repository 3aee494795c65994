"""The engine's modules import one way: no circle (imports inside functions count too), no import
inside a function at all (a lazy `from transformers import AutoConfig` raced under threads), and
nothing of the project. Imports under `if TYPE_CHECKING:` never run, so they count for none of it."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import gpu_runner

PACKAGE = Path(gpu_runner.__file__).parent
PROJECT_PACKAGES = {"accounts", "api", "cookbook", "front", "lorasmith", "lorasmith_server", "platform", "training"}


def _module_name(path: Path) -> str:
    return "gpu_runner" if path.name == "__init__.py" else f"gpu_runner.{path.stem}"


def _runtime_imports(
    nodes: Iterable[ast.AST], in_function: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """(import node, inside a function?) for every import among `nodes` and below that can run."""
    for node in nodes:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _runtime_imports(node.orelse, in_function)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _runtime_imports(ast.iter_child_nodes(node), inside)


def _targets(node: ast.Import | ast.ImportFrom, package: Path) -> list[str]:
    """Absolute names of what the import loads: `from . import x` loads submodule x when there is one."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level == 0:
        return [node.module or ""]
    base = "gpu_runner" + (f".{node.module}" if node.module else "")
    if node.module is None:
        return [f"{base}.{a.name}" if (package / f"{a.name}.py").exists() else base for a in node.names]
    return [base]


def engine_imports(package: Path = PACKAGE) -> dict[str, list[tuple[str, int, bool]]]:
    """module -> [(imported module, line, inside a function?)] over every module of the package."""
    graph = {}
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[_module_name(path)] = [
            (target, node.lineno, lazy)
            for node, lazy in _runtime_imports(tree.body)
            for target in _targets(node, package)
        ]
    return graph


def import_cycles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    edges = {m: sorted({t for t, _, _ in imports if t in graph}) for m, imports in graph.items()}
    cycles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(path[path.index(module) :] + [module])
            return
        if module in done:
            return
        for target in edges[module]:
            visit(target, path + [module])
        done.add(module)

    for module in edges:
        visit(module, [])
    return cycles


def test_the_engine_modules_import_one_way():
    assert import_cycles(engine_imports()) == []


def test_no_module_imports_inside_a_function():
    lazy = [(m, t, line) for m, imports in engine_imports().items() for t, line, in_function in imports if in_function]
    assert lazy == []


def test_the_engine_imports_nothing_of_the_project():
    project = [
        (m, t) for m, imports in engine_imports().items() for t, _, _ in imports if t.split(".")[0] in PROJECT_PACKAGES
    ]
    assert project == []


def test_the_check_sees_a_circle_through_a_lazy_import(tmp_path):
    (tmp_path / "a.py").write_text("from .b import B\n")
    (tmp_path / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import C\ndef f():\n    from .a import A\n"
    )
    (tmp_path / "c.py").write_text("from .b import B\n")
    graph = engine_imports(tmp_path)
    assert import_cycles(graph) == [["gpu_runner.a", "gpu_runner.b", "gpu_runner.a"]]
    assert [(t, lazy) for t, _, lazy in graph["gpu_runner.b"]] == [("typing", False), ("gpu_runner.a", True)]
