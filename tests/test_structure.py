"""The package's shape: no import cycles between its modules, no function longer than 80 lines.

Read from the source with ``ast`` (nothing is imported). Every import of a prefixtune module
counts, at module level and inside functions (a function-level import is still a dependency; it
only hides the cycle until the call). The helpers are checked on small synthetic packages first,
so that the checks of the real package are known to be able to fail.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import prefixtune

PACKAGE = Path(prefixtune.__file__).resolve().parent
MAX_FUNCTION_LINES = 80


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``line`` (``in_function``: inside a def)."""

    source: str
    target: str
    line: int
    in_function: bool


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file for every module of the package at ``root`` (a package is its __init__)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name,) + path.relative_to(root).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _function_lines(tree: ast.AST) -> set[int]:
    """Line numbers of the import statements that sit inside a function."""
    inside = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside |= {n.lineno for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return inside


def import_edges(root: Path) -> list[Edge]:
    """Every import of one of the package's own modules, resolved to the module it loads.

    ``from x import y`` is an import of ``x.y`` when ``x.y`` is a module of the package, else of
    ``x``; relative imports are resolved against the importing module's package.
    """
    names = module_names(root)
    edges = []
    for name, path in names.items():
        tree = ast.parse(path.read_text(), str(path))
        in_function = _function_lines(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in names else module for a in node.names]
            for target in targets:
                if target in names:
                    edges.append(Edge(name, target, node.lineno, node.lineno in in_function))
    return edges


def _shortest_cycle(start: str, graph: dict[str, dict[str, Edge]]) -> list[Edge] | None:
    """The shortest chain of imports from ``start`` back to ``start`` (breadth first)."""
    came: dict[str, Edge | None] = {start: None}
    todo = deque([start])
    while todo:
        node = todo.popleft()
        for target, edge in sorted(graph.get(node, {}).items()):
            if target == start:
                chain = [edge]
                while came[chain[0].source] is not None:
                    chain.insert(0, came[chain[0].source])
                return chain
            if target not in came:
                came[target] = edge
                todo.append(target)
    return None


def import_cycles(root: Path) -> list[list[Edge]]:
    """One shortest cycle through each module that is on a cycle, without repeats."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in import_edges(root):
        graph.setdefault(e.source, {}).setdefault(e.target, e)
    cycles, seen = [], set()
    for start in sorted(graph):
        chain = _shortest_cycle(start, graph)
        if chain is None:
            continue
        key = frozenset((e.source, e.target) for e in chain)
        if key not in seen:
            seen.add(key)
            cycles.append(chain)
    return cycles


def describe(chain: list[Edge]) -> str:
    """``a -> b (line 3) -> a (line 9, in a function)``"""
    steps = [chain[0].source] + [f"{e.target} ({e.source.rpartition('.')[2]}.py line {e.line}"
                                 f"{', in a function' if e.in_function else ''})" for e in chain]
    return " -> ".join(steps)


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, str, int]]:
    """(file, line, name, length) of every function or method of more than ``limit`` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append((str(path.relative_to(root.parent)), node.lineno, node.name, length))
    return found


# ------------------------------------------------------------------ the helpers, on known packages


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "pkg"


def test_finds_cycles_through_function_level_relative_and_submodule_imports(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from pkg.sub.b import thing\n",
        "pkg/a.py": "def f():\n    from .sub import b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "import os\nfrom pkg import a\nthing = 1\n",
        "pkg/c.py": "from pkg.sub import b\nimport pkg\n",   # pkg -> sub.b only: c is on no cycle
    })
    cycles = {describe(c) for c in import_cycles(pkg)}
    assert cycles == {"pkg.a -> pkg.sub.b (a.py line 2, in a function) -> pkg.a (b.py line 2)"}
    edges = {(e.source, e.target) for e in import_edges(pkg)}
    assert ("pkg.c", "pkg") in edges and ("pkg", "pkg.sub.b") in edges and ("pkg.sub.b", "pkg.a") in edges


def test_no_cycle_in_a_layered_package(tmp_path):
    pkg = _write(tmp_path, {"pkg/__init__.py": "from pkg.top import run\n", "pkg/top.py": "from pkg import low\n",
                            "pkg/low.py": "import json\n"})
    assert import_cycles(pkg) == []


def test_long_functions_counts_the_whole_body(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    pkg = _write(tmp_path, {"pkg/__init__.py": "", "pkg/m.py": f"def ok():\n{body[:-len('    x79 = 79') - 1]}\n\n"
                            f"class C:\n    def too_long(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n"})
    assert long_functions(pkg) == [("pkg/m.py", 83, "too_long", 81)]


# ------------------------------------------------------------------------------- the package itself


def test_no_import_cycles():
    cycles = import_cycles(PACKAGE)
    assert not cycles, f"{len(cycles)} import cycles:\n" + "\n".join(describe(c) for c in cycles)


def test_no_function_longer_than_80_lines():
    found = long_functions(PACKAGE)
    assert not found, f"{len(found)} functions longer than {MAX_FUNCTION_LINES} lines:\n" + "\n".join(
        f"src/{file}:{line} {name}: {length} lines" for file, line, name, length in found)
