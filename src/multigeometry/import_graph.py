"""The import graph of the `multigeometry` package, read from the source (nothing is imported).

Every `import` and `from ... import` of a module counts, at module level and inside functions (a lazy import runs
when its stage runs), except those under `if TYPE_CHECKING:`, which never run. Importing `a.b.c` also runs the
`__init__.py` of `a` and `a.b`, so those are edges too. Imports of other packages are left out.

The stage dependencies (`stage_deps.py`) are the closure of this graph from each stage's module, and the layering test
(tests/test_stage_deps.py) reads its edges.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE = "multigeometry"
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True, order=True)
class Edge:
    """`source` imports `target` at `line` of `source`'s file; `names` is what the statement imports."""

    source: str
    target: str
    line: int
    names: str


def module_file(module: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The file of a module of the package (`multigeometry.a.b` -> `a/b.py` or `a/b/__init__.py`), or None."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py") if len(parts) > 1 else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def is_namespace(module: str, package_dir: Path = PACKAGE_DIR) -> bool:
    """A folder of the package without `__init__.py` (a namespace package: importing it runs no code)."""
    parts = module.split(".")
    folder = package_dir.joinpath(*parts[1:])
    return parts[0] == PACKAGE and len(parts) > 1 and folder.is_dir() and not (folder / "__init__.py").exists()


def module_name(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    """The dotted name of a file of the package."""
    rel = Path(path).resolve().relative_to(package_dir.resolve()).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Every module of the package, sorted."""
    return sorted(module_name(p, package_dir) for p in package_dir.rglob("*.py") if "__pycache__" not in p.parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement of the tree, in functions too, but not the body of `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _absolute(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _with_parents(module: str) -> list[str]:
    """`a.b.c` -> [`a`, `a.b`, `a.b.c`]: importing a module runs its packages' `__init__` first."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def imports_of(source: str, package_dir: Path = PACKAGE_DIR) -> tuple[Edge, ...]:
    """The package modules that module `source` imports (with their parent packages), one edge each, sorted."""
    path = module_file(source, package_dir)
    if path is None and is_namespace(source, package_dir):
        return ()
    if path is None:
        raise ModuleNotFoundError(f"{source}: no such module in {package_dir}")
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    edges: set[Edge] = set()
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            found = [(alias.name, alias.name) for alias in node.names]
        else:
            base = _absolute(node, source, is_package)
            # `from a import b` imports the module `a.b` when there is one, else the name `b` of `a`
            found = [(f"{base}.{alias.name}" if module_file(f"{base}.{alias.name}", package_dir)
                      or is_namespace(f"{base}.{alias.name}", package_dir) else base,
                      alias.name) for alias in node.names]
        for target, name in found:
            if target.split(".")[0] != PACKAGE:
                continue
            if module_file(target, package_dir) is None and not is_namespace(target, package_dir):
                raise ModuleNotFoundError(f"{path}:{node.lineno}: imports {target}, which is not in {package_dir}")
            for module in _with_parents(target):
                if module != source:
                    edges.add(Edge(source, module, node.lineno, name))
    return tuple(sorted(edges))


def closure(roots: Iterable[str], package_dir: Path = PACKAGE_DIR) -> set[str]:
    """The roots and every package module they import, directly or not (with their parent packages)."""
    todo = [m for root in roots for m in _with_parents(root)]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(edge.target for edge in imports_of(module, package_dir))
    return seen


def paths_to(roots: Iterable[str], targets: Iterable[str], package_dir: Path = PACKAGE_DIR) -> dict[str, list[Edge]]:
    """For each module of `targets` reachable from `roots`, one shortest chain of imports that reaches it."""
    wanted = set(targets)
    chains: dict[str, list[Edge]] = {}
    frontier = [(root, []) for root in roots]
    seen = {root for root, _ in frontier}
    while frontier:
        following = []
        for module, chain in frontier:
            for edge in imports_of(module, package_dir):
                if edge.target in seen:
                    continue
                seen.add(edge.target)
                step = [*chain, edge]
                if edge.target in wanted:
                    chains[edge.target] = step
                following.append((edge.target, step))
        frontier = following
    return chains
