"""The import graph of src/opir, built from the AST: no cycles, and the
layering (core knows nothing of its users; distributed knows no layer).

Imports inside functions count (a lazy import is still a dependency), and so
do imports under ``if TYPE_CHECKING:``: they never run, but a circle of them
still means the modules cannot be read, checked or moved one without the
other. ``from a.b import c`` is an
edge to ``a.b`` (and to ``a.b.c`` when that is a module); the implicit import of
the parent packages ``a`` is not counted, as usual for such checks.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"
PACKAGE = "opir"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(
    tree: ast.AST, module: str, is_package: bool, known: set[str], type_level: bool = True
) -> set[str]:
    """opir modules imported by ``module`` (``from a import b`` counts a.b if it is a module);
    ``type_level=False`` leaves out the imports under ``if TYPE_CHECKING:``."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_level:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in known and name != module}


def import_graph(type_level: bool = True) -> dict[str, set[str]]:
    files = {
        _module_name(p): p for p in (SRC / PACKAGE).rglob("*.py") if "__pycache__" not in p.parts
    }
    known = set(files)
    return {
        name: _imports(
            ast.parse(path.read_text()), name, path.name == "__init__.py", known, type_level
        )
        for name, path in files.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def _edges_between(graph: dict[str, set[str]], source: str, targets: tuple[str, ...]):
    def inside(name: str, pkg: str) -> bool:
        return name == pkg or name.startswith(pkg + ".")

    return sorted(
        (a, b)
        for a, deps in graph.items()
        if inside(a, source)
        for b in deps
        if any(inside(b, t) for t in targets)
    )


def test_graph_sees_lazy_and_type_level_imports():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from opir.b import x\n"
        "def f():\n    from opir import c\n    import opir.d\n"
        "from . import e\n"
    )
    known = {"opir.a", "opir.b", "opir.c", "opir.d", "opir.e", "opir"}
    runtime = {"opir", "opir.c", "opir.d", "opir.e"}
    assert _imports(tree, "opir.a", False, known, type_level=False) == runtime
    assert _imports(tree, "opir.a", False, known) == runtime | {"opir.b"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_opir_not_even_through_type_checking_imports():
    cycles = _cycles(import_graph(type_level=True))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_distributed_imports_no_layer():
    graph = import_graph()
    assert not _edges_between(graph, "opir.distributed", ("opir.layers",))


def test_core_imports_none_of_its_users():
    users = tuple(
        f"opir.{p}"
        for p in ("layers", "providers", "compiler", "distributed", "ops", "integrations")
    )
    graph = import_graph()
    assert not _edges_between(graph, "opir.core", users)
