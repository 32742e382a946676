"""The project's imports, read with :mod:`ast` (nothing is imported): which module
imports which, for the layer and import-cycle tests."""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    line: int
    target: str  # absolute dotted name as written (after resolving relative imports)
    names: tuple  # for ``from X import a, b``: ("a", "b"); else ()
    module_level: bool  # runs when the module is imported (not inside a function, not TYPE_CHECKING)


def find_modules(root: str, packages: Sequence[str]) -> Dict[str, str]:
    """``{dotted module name: file path}`` of every ``.py`` under *packages* (a package is
    named by its ``__init__``)."""
    found: Dict[str, str] = {}
    for package in packages:
        for folder, dirs, files in os.walk(os.path.join(root, *package.split("."))):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                parts = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = os.path.join(folder, name)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(body: List[ast.AST], module_level: bool) -> Iterator[tuple]:
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, module_level
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _walk(node.body, False)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _walk(node.body, False)
            yield from _walk(node.orelse, module_level)
        else:  # class bodies, if/try/with/for at module level run at import time
            for field in ("body", "orelse", "finalbody", "handlers"):
                sub = getattr(node, field, None)
                if isinstance(sub, list):
                    yield from _walk([s for s in sub if isinstance(s, (ast.stmt, ast.ExceptHandler))], module_level)


def imports_of(module: str, path: str, is_package: bool) -> List[Import]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found: List[Import] = []
    for node, module_level in _walk(tree.body, True):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, node.lineno, alias.name, (), module_level))
            continue
        base = node.module or ""
        if node.level:
            package = module if is_package else module.rpartition(".")[0]
            parts = package.split(".")
            if node.level > 1:
                parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        found.append(Import(module, node.lineno, base, tuple(a.name for a in node.names), module_level))
    return found


class ImportGraph:
    """The project modules under *packages* and their imports."""

    def __init__(self, packages: Sequence[str], root: str = ROOT):
        self.root = root
        self.files = find_modules(root, packages)
        self.packages = {m for m, p in self.files.items() if p.endswith("__init__.py")}
        self.imports: Dict[str, List[Import]] = {
            m: imports_of(m, p, m in self.packages) for m, p in self.files.items()}

    def modules_run_by(self, imp: Import) -> List[str]:
        """The project modules an import statement runs: every package on the way (importing
        ``a.b.c`` runs ``a/__init__``, ``a/b/__init__``, then ``a/b/c``) and, for ``from a.b
        import c``, the submodule ``a.b.c`` when there is one."""
        parts = imp.target.split(".")
        run = [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in self.files]
        for name in imp.names:
            sub = f"{imp.target}.{name}"
            if sub in self.files:
                run.append(sub)
        return run

    def edges(self, module_level_only: bool = True) -> Dict[str, Set[str]]:
        graph: Dict[str, Set[str]] = {m: set() for m in self.files}
        for module, found in self.imports.items():
            for imp in found:
                if module_level_only and not imp.module_level:
                    continue
                graph[module].update(t for t in self.modules_run_by(imp) if t != module)
        return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle (``[a, b, …, a]``) per strongly connected component that has one."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[Set[str]] = []

    def visit(start: str) -> None:  # iterative Tarjan
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child: Optional[str] = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: Dict[str, Set[str]], component: Set[str]) -> List[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    start = min(component)
    previous: Dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & component):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return list(reversed(path)) + [start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"no cycle in component {sorted(component)}")
