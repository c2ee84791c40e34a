"""Measure the shape of the ``harness`` package: big classes, import cycles, late imports.

Reads the source with ``ast`` only (nothing is imported) and prints three lists:

* classes with more than ``--max-methods`` methods or ``--max-statements``
  statement lines (lines on which a statement starts, docstrings left out);
* cycles in the graph of imports between harness modules, once with the
  module-level imports only and once counting imports inside functions too
  (imports under ``if TYPE_CHECKING:`` never run and are left out);
* every import of a harness module made inside a function, as file:line.

    python bench/architecture.py [--max-methods 30] [--max-statements 400]
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "harness"


@dataclass(frozen=True)
class Import:
    """One import of a harness module by another."""

    importer: str
    imported: str
    path: Path
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    """The dotted name of the module at ``path`` (below ``ROOT``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith("TYPE_CHECKING")


def _walk(node: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Nodes with whether they are inside a function; ``if TYPE_CHECKING:`` blocks are left out (they never run)."""
    for child in ast.iter_child_nodes(node):
        if _type_checking(child):
            continue
        yield child, in_function
        inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _walk(child, inner)


def imports(known: dict[str, Path]) -> list[Import]:
    """Imports between harness modules; ``from harness import x`` counts as importing ``harness.x``."""
    found: list[Import] = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        for node, in_function in _walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in known else base)
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.append(Import(name, target, path, node.lineno, in_function))
    return found


def cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.importer, set()).add(e.imported)
        graph.setdefault(e.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                result.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(result)


def _statement_lines(cls: ast.ClassDef) -> int:
    lines: set[int] = set()
    for node in ast.walk(cls):
        if node is cls or not isinstance(node, ast.stmt):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue
        lines.add(node.lineno)
    return len(lines)


def big_classes(known: dict[str, Path], max_methods: int, max_statements: int) -> list[tuple[str, int, int]]:
    """(file:line Class, methods, statement lines) for each class over either limit."""
    found = []
    for path in known.values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ClassDef):
                continue
            methods = sum(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in node.body)
            statements = _statement_lines(node)
            if methods > max_methods or statements > max_statements:
                where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
                found.append((where, methods, statements))
    return sorted(found, key=lambda t: -t[2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-methods", type=int, default=30)
    parser.add_argument("--max-statements", type=int, default=400)
    args = parser.parse_args(argv)
    known = modules()
    edges = imports(known)

    print(f"modules: {len(known)}")
    print(f"classes over {args.max_methods} methods or {args.max_statements} statement lines:")
    for where, methods, statements in big_classes(known, args.max_methods, args.max_statements):
        print(f"  {where}: {methods} methods, {statements} statement lines")

    top = [e for e in edges if not e.in_function]
    print("import cycles, module-level imports only:")
    for component in cycles(top):
        print("  " + " <-> ".join(component))
    print("import cycles, counting imports inside functions:")
    for component in cycles(edges):
        print("  " + " <-> ".join(component))

    late = sorted({e for e in edges if e.in_function}, key=lambda e: (str(e.path), e.line, e.imported))
    print(f"harness imports inside functions: {len(late)}")
    for e in late:
        print(f"  {e.path.relative_to(ROOT)}:{e.line} {e.importer} -> {e.imported}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
