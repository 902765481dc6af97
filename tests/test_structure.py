"""The package's shape: no file-level import cycle (imports inside functions count
too) and no module named after a standard-library module."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "bornagain_kd"


def _module_name(path: Path) -> str:
    parts = ("bornagain_kd",) + path.relative_to(PACKAGE_ROOT).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that `name` starts with (`a.b.func` -> `a.b`)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every bornagain module `module` imports, at module level or inside a function."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports pkg.mod; `from mod import func` resolves to mod.
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name, known)
            if target is not None and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {m: _imports(m, p, known) for m, p in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
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
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "bornagain_kd.pipelines.glue_teachers" in graph["bornagain_kd.api"]  # imported in a function
    # A cycle made only by an in-function import is still found.
    toy = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert find_cycles(toy) == [["a", "b"]]


def test_no_import_cycle_between_files():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles between files (in-function imports counted): " + "; ".join(
        " <-> ".join(component) for component in cycles)


def test_no_module_named_after_the_standard_library():
    shadows = sorted(
        m for m in _modules()
        if m.rpartition(".")[2] in sys.stdlib_module_names and m != "bornagain_kd")
    assert not shadows, f"modules named after a standard-library module: {shadows}"
