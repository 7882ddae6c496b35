"""The rules of docs/ARCHITECTURE.md, checked over the source with ``ast``.

No import cycles (imports inside functions count; ``if TYPE_CHECKING:`` blocks do not),
no mixins, no module over 500 lines, a ledger of at most 70 methods, adapters on
nasca_core's public modules only, and no reaching into another module's ``_private``
attributes.
"""

from __future__ import annotations

import ast
import functools
import re
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nasca_core", "nasca_langchain", "nasca_llamaindex")
ADAPTERS = ("nasca_langchain", "nasca_llamaindex")
MAX_LINES = 500
MAX_LEDGER_METHODS = 70


def _parse_tree() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = (path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return out


# Parsed at collection, before any test starts a thread: CPython 3.11 before 3.11.9 can fail
# ast.parse with "AST constructor recursion depth mismatch" while another thread parses (gh-106905).
_MODULES = _parse_tree()


def modules() -> dict[str, tuple[Path, ast.Module]]:
    return _MODULES


def where(module: str, node: ast.AST) -> str:
    return f"{modules()[module][0].relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(tree: ast.AST, *, type_checking: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth; ``if TYPE_CHECKING:`` bodies only if asked."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and is_type_checking(node) and not type_checking:
            todo.extend(reversed(node.orelse))
        else:
            todo.extend(reversed(list(ast.iter_child_nodes(node))))


def targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The modules an import names: ``a.b`` for ``import a.b``, and for ``from a import b``
    ``a.b`` when that is a module, else ``a``; relative imports resolved."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        package = module.split(".")
        if modules()[module][0].name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
    for alias in node.names:
        yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base


def in_tree(name: str) -> str | None:
    # `import a.b.c` of a name below the tree's modules is an edge to the closest module.
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, dict[str, ast.AST]]:
    graph: dict[str, dict[str, ast.AST]] = {name: {} for name in modules()}
    for name, (_, tree) in modules().items():
        for node in imports(tree, type_checking=False):
            for target in targets(name, node):
                found = in_tree(target)
                if found is not None:
                    graph[name].setdefault(found, node)
    return graph


def reachable(graph: dict[str, dict[str, ast.AST]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return seen


def cycles(graph: dict[str, dict[str, ast.AST]]) -> list[list[str]]:
    """The strongly connected components that hold a cycle (a self-import included)."""
    reach = {node: reachable(graph, node) for node in graph}
    out: list[list[str]] = []
    for node in graph:
        if node in reach[node] and not any(node in c for c in out):
            out.append(sorted(other for other in reach[node] if node in reach[other]))
    return out


def test_no_import_cycles() -> None:
    graph = import_graph()
    report = []
    for component in cycles(graph):
        members = set(component)
        edges = [f"    {a} -> {b}  ({where(a, node)})"
                 for a in component for b, node in sorted(graph[a].items()) if b in members]
        report.append(f"a cycle of {len(component)} modules: {', '.join(component)}\n" + "\n".join(edges))
    assert not report, (
        "import cycles (an import inside a function counts; only `if TYPE_CHECKING:` is exempt). "
        "Break each by moving the shared code down a layer or importing only for type checking:\n"
        + "\n".join(report)
    )


def test_no_mixins() -> None:
    found = [f"{node.name} ({where(name, node)})" for name, (_, tree) in modules().items()
             for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name.endswith("Mixin")]
    assert not found, f"mixins (compose a service over the ledger's public port instead): {found}"


def test_no_module_over_500_lines() -> None:
    # Data belongs in data files beside the code (JSON, Lua), not in Python strings.
    sizes = {path: len(path.read_text(encoding="utf-8").splitlines()) for path, _ in modules().values()}
    big = [f"{path.relative_to(ROOT)}: {n} lines" for path, n in sorted(sizes.items()) if n > MAX_LINES]
    assert not big, f"modules over {MAX_LINES} lines (split them by responsibility): {big}"


def test_the_ledger_stays_small() -> None:
    from nasca_core import Nasca

    names = {
        name
        for klass in Nasca.__mro__ if klass not in (object, typing.Generic)
        for name, value in vars(klass).items()
        if callable(value) or isinstance(value, property | classmethod | staticmethod
                                         | functools.cached_property)
    }
    assert len(names) <= MAX_LEDGER_METHODS, (
        f"Nasca has {len(names)} methods and properties (at most {MAX_LEDGER_METHODS}): put new "
        f"features in a service built over the ledger's public port. They are: {sorted(names)}"
    )


def test_adapters_use_only_public_nasca_core_modules() -> None:
    found = []
    for name, (_, tree) in modules().items():
        if not name.startswith(ADAPTERS):
            continue
        for node in imports(tree, type_checking=True):
            names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            for target in targets(name, node):
                private = [p for p in target.split(".") + names if p.startswith("_")]
                if target.split(".")[0] == "nasca_core" and private:
                    found.append(f"{where(name, node)}: imports {', '.join(private)} from {target}")
    assert not found, "adapters import private parts of nasca_core (add them to its public API):\n" + (
        "\n".join(found))


def defined_names(tree: ast.Module) -> set[str]:
    """What a module defines: functions, classes, class and module attributes, ``self.x =``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)  # module and class attributes (and locals: a harmless superset)
        elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            out.add(node.attr)
        elif isinstance(node, ast.keyword) and node.arg:
            out.add(node.arg)  # argparse's set_defaults(_run=...) names an attribute too
    return out


def is_own(expr: ast.expr) -> bool:
    return (isinstance(expr, ast.Name) and expr.id in ("self", "cls")) or (
        isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "super")


def is_private(attr: str) -> bool:
    return attr.startswith("_") and not attr.startswith("__")


def reaches(tree: ast.Module) -> Iterator[tuple[ast.AST, str]]:
    """Each ``expr._name`` (or ``getattr(expr, "_name")``) of a name the module does not define."""
    own = defined_names(tree)
    for node in ast.walk(tree):
        attr: str | None = None
        expr: ast.expr | None = None
        if isinstance(node, ast.Attribute):
            attr, expr = node.attr, node.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) >= 2
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            attr, expr = node.args[1].value, node.args[0]  # the same reach, spelled as a string
        if attr and expr and is_private(attr) and not is_own(expr) and attr not in own:
            yield node, f"{ast.unparse(expr)}.{attr}"


def private_reaches() -> list[str]:
    found = [(where(name, node), text) for name, (_, tree) in modules().items()
             for node, text in reaches(tree)]
    return [f"{at}: {text}" for at, text in sorted(found, key=lambda f: natural(f[0]))]


def natural(text: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def test_nothing_reaches_into_another_modules_private_attributes() -> None:
    found = private_reaches()
    assert not found, (
        f"{len(found)} reaches into a `_private` attribute defined in another module (use or add a "
        "public method on the owner, e.g. the ledger's port in docs/ARCHITECTURE.md):\n" + "\n".join(found))


@pytest.mark.parametrize(("source", "expected"), [
    ("import a.b\n", ["a.b"]),
    ("from nasca_core import billing, Nasca\n", ["nasca_core.billing", "nasca_core"]),
    ("from . import _errors\n", ["nasca_core._errors"]),
    ("from ._errors import X\n", ["nasca_core._errors"]),
    ("from .. import _errors\n", ["nasca_core._errors"]),
])
def test_import_targets(source: str, expected: list[str]) -> None:
    # Resolved as if written in nasca_core/_usage.py, except `..` from nasca_core/billing/_models.py.
    module = "nasca_core.billing._models" if "from .." in source else "nasca_core._usage"
    (node,) = ast.parse(source).body
    assert isinstance(node, ast.Import | ast.ImportFrom)
    assert list(targets(module, node)) == expected


def test_type_checking_imports_are_not_edges() -> None:
    tree = ast.parse("if TYPE_CHECKING:\n    import a\nelse:\n    import b\ndef f():\n    import c\n")
    assert [n.names[0].name for n in imports(tree, type_checking=False)] == ["b", "c"]


def test_cycles_are_found() -> None:
    node = ast.Pass()
    graph: dict[str, dict[str, ast.AST]] = {
        "a": {"b": node}, "b": {"c": node}, "c": {"a": node, "d": node}, "d": {}, "e": {"e": node},
    }
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e"]]


def test_private_reaches_are_found() -> None:
    tree = ast.parse("class A:\n    _mine = 1\n    def f(self, n):\n        return n._mine, n._theirs, "
                     "self._x, super()._y, getattr(n, '_hidden'), n.__dict__\n")
    assert [text for _, text in reaches(tree)] == ["n._theirs", "n._hidden"]
