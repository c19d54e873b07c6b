"""The import rules of docs/architecture.md, checked on the syntax tree of every module.

- ``aiotrace_boot`` runs at every interpreter start: at module level it imports only the
  standard library (and itself), never ``aiotrace``, asyncio or OpenTelemetry.
- No import cycle between aiotrace's modules, imports inside functions included: the arrows of
  the layers point one way (boot -> engine -> catalogue -> primitives -> ``_otel``).
- The core never reads the environment: only the entry points that are there to read it do.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

import aiotrace
import aiotrace_boot

PACKAGES = {
    "aiotrace": Path(aiotrace.__file__).parent,
    "aiotrace_boot": Path(aiotrace_boot.__file__).parent,
}
# The modules whose job is to read the environment: the start-up hook's parser, the launcher,
# the doctor and the OpenTelemetry instrumentor (which reads the same variables).
READS_ENVIRONMENT = {
    "aiotrace_boot",
    "aiotrace_boot._config",
    "aiotrace_boot._hook",
    "aiotrace.cli",
    "aiotrace.doctor",
    "aiotrace.instrumentation",
}
# Modules aiotrace_boot may import at module level besides the standard library.
STDLIB_ONLY_EXCEPTIONS: Set[str] = set()


def _modules() -> Iterator[Tuple[str, Path]]:
    for package, folder in PACKAGES.items():
        for path in sorted(folder.glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            yield name, path


def _resolve(module: str, node: ast.ImportFrom) -> List[str]:
    """The absolute names an ``ImportFrom`` in ``module`` imports: ``from . import x`` names
    the module ``pkg.x`` when there is one, else the package whose attribute ``x`` is read."""
    if node.level:
        package = module if module in PACKAGES else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    known = {name for name, _ in _modules()}
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def _imports(module: str, tree: ast.AST, top_level_only: bool) -> Set[str]:
    found: Set[str] = set()
    nodes = tree.body if top_level_only else list(ast.walk(tree))  # type: ignore[attr-defined]
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.update(_resolve(module, node))
        elif isinstance(node, ast.Call) and _dynamic_import(module, node):
            found.add(_dynamic_import(module, node))
        elif top_level_only and isinstance(node, (ast.If, ast.Try)):
            # ``if TYPE_CHECKING:`` blocks are never run; other top-level blocks are.
            test = getattr(node, "test", None)
            if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                continue
            for child in ast.walk(node):
                if isinstance(child, ast.Import):
                    found.update(alias.name for alias in child.names)
                elif isinstance(child, ast.ImportFrom):
                    found.update(_resolve(module, child))
    return found


def _dynamic_import(module: str, node: ast.Call) -> str:
    """The module an ``importlib.import_module("name"[, __package__])`` call names, or ''."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if called != "import_module" or not node.args:
        return ""
    first = node.args[0]
    if not isinstance(first, ast.Constant) or not isinstance(first.value, str):
        return ""
    name = first.value
    if name.startswith("."):
        package = module if module in PACKAGES else module.rpartition(".")[0]
        return package + name
    return name


def _trees() -> Dict[str, ast.AST]:
    return {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in _modules()}


def test_boot_imports_only_the_standard_library_at_module_level() -> None:
    if sys.version_info < (3, 10):
        pytest.skip("sys.stdlib_module_names is 3.10+; the rule is the same on every Python")
    stdlib = set(sys.stdlib_module_names)
    for name, tree in _trees().items():
        if not name.startswith("aiotrace_boot"):
            continue
        for imported in _imports(name, tree, top_level_only=True):
            top = imported.partition(".")[0]
            assert top in stdlib or top == "aiotrace_boot" or imported in STDLIB_ONLY_EXCEPTIONS, (
                f"{name} imports {imported} at module level"
            )


def test_no_import_cycle_inside_functions_included() -> None:
    trees = _trees()
    known = set(trees)
    graph = {
        name: {i for i in _imports(name, tree, top_level_only=False) if i in known and i != name}
        for name, tree in trees.items()
    }
    # The package's __init__ re-exports its modules; a module importing a name from the
    # package (``from aiotrace import __version__``) is an edge to the package itself.
    cycles = []
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_core_never_reads_the_environment() -> None:
    for name, tree in _trees().items():
        if name in READS_ENVIRONMENT:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                pytest.fail(f"{name} reads the environment (line {node.lineno})")


def test_the_engine_imports_no_module_of_aiotrace() -> None:
    """aiotrace/patching.py receives the patches and their hooks as data: it imports neither
    the catalogue nor a primitive, nor the start-up package (inside functions included)."""
    tree = _trees()["aiotrace.patching"]
    imported = _imports("aiotrace.patching", tree, top_level_only=False)
    assert not [i for i in imported if i.partition(".")[0] in PACKAGES], imported


def test_primitives_never_import_the_registry_or_the_catalogue() -> None:
    """The arrows point one way: the registry composes the catalogue, the catalogue names the
    primitives' factories; no primitive asks back (a factory gets the original it replaces)."""
    composing = {"aiotrace", "aiotrace.registry", "aiotrace.catalogue"}
    # The tools on top may use the registry: they are not patched code.
    tools = {
        "aiotrace.__main__",
        "aiotrace.cli",
        "aiotrace.demo",
        "aiotrace.doctor",
        "aiotrace.instrumentation",
        "aiotrace.testing",
    }
    for name, tree in _trees().items():
        if not name.startswith("aiotrace.") or name in composing | tools:
            continue
        imported = _imports(name, tree, top_level_only=False)
        assert not imported & {"aiotrace.registry", "aiotrace.catalogue"}, name
