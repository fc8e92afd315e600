"""The package's layering, read from its imports (no Spear code is run).

Floors, lowest first: ``errors``; ``protocol``, ``config``, ``ids``; ``roles``
and the other small shared modules; ``mesh``, ``store``, ``runtimes`` (the
parts); ``sms``, ``spearlet``, ``client``, ``gateway`` (the services and their
clients); ``cli`` on top. An import may only go down. Tools (``bench/``) sit
outside the package: they may import Spear, never the other way round.

Also checked here, because a large module or function hides structure: no
module over :data:`MAX_MODULE_LINES`, no function over
:data:`MAX_FUNCTION_LINES` unless its docstring says why (a line starting
``Long because``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "spear"

MAX_MODULE_LINES = 650  # "a few hundred lines"; ~600 with a little slack
MAX_FUNCTION_LINES = 80

#: modules that may import nothing of Spear but the ones listed
FLOOR = {
    "spear.errors": set(),
    "spear.ids": {"spear.errors"},
    "spear.schema": set(),
    "spear.protocol": {"spear.errors", "spear.ids", "spear.schema"},
    "spear.config": {"spear.errors", "spear.config.sections"},
    "spear.config.sections": set(),
    "spear.roles": {"spear.errors", "spear.protocol"},
    "spear.specs": {"spear.errors", "spear.protocol"},
    "spear.bundles": {"spear.errors", "spear.protocol"},
    "spear.memory": set(),
    "spear.tracing": {"spear.config"},
}

#: room (first part below ``spear``) -> rooms it must never import
FORBIDDEN = {
    "mesh": {"sms", "spearlet", "gateway", "cli", "runtimes", "store", "client", "cluster"},
    "store": {"sms", "spearlet", "gateway", "cli", "runtimes", "mesh", "client", "cluster"},
    "runtimes": {"sms", "spearlet", "gateway", "cli", "mesh", "client", "cluster"},
    "sms": {"spearlet", "gateway", "cli", "runtimes", "client", "cluster"},
    "spearlet": {"sms", "gateway", "cli", "client", "cluster"},
    "client": {"sms", "spearlet", "gateway", "cli", "runtimes", "cluster"},
    "gateway": {"sms", "spearlet", "runtimes", "store"},
    "remote": {"sms", "spearlet", "gateway", "cli", "runtimes", "store", "cluster"},
    "autoscale": {"sms", "spearlet", "gateway", "cli", "runtimes", "store", "mesh", "cluster"},
    "_fast": {"*"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path) -> set[str]:
    """The Spear (and bench) modules ``name`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(), str(path))
    base = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            return  # annotations only: no import at run time
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base.split(".")
                pkg = pkg[: len(pkg) - (node.level - 1)]
                mod = ".".join(pkg + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                found.add(sub if sub in MODULES else mod)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m == "spear" or m.startswith(("spear.", "bench"))}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "cli"  # ``python -m spear.sms`` is ``spear sms``: an entry point, on the top floor
    return parts[1] if len(parts) > 1 else ""


def test_graph_was_read():
    # the checks below would pass on an empty graph
    assert "spear.protocol" in GRAPH and "spear.sms" in MODULES
    assert "spear.errors" in GRAPH["spear.protocol"]


@pytest.mark.parametrize("module", sorted(FLOOR))
def test_floor_modules_import_nothing_above_them(module):
    assert module in GRAPH, f"{module} is gone: update FLOOR"
    above = GRAPH[module] - FLOOR[module]
    assert not above, f"{module} may import only {sorted(FLOOR[module])}, imports {sorted(above)}"


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_rooms_import_only_downwards(room):
    bad = []
    for module, deps in GRAPH.items():
        if _room(module) != room:
            continue
        for dep in deps:
            target = _room(dep)
            if dep.startswith("spear") and target != room and (
                    target in FORBIDDEN[room] or ("*" in FORBIDDEN[room] and target)):
                bad.append(f"{module} -> {dep}")
    assert not bad, "imports that go up a floor:\n" + "\n".join(sorted(bad))


def test_nothing_in_spear_imports_bench():
    bad = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() for d in deps if d.startswith("bench"))
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    # a package's __init__ re-exporting its submodules is not a circle of design:
    # edges into a package's own __init__ from inside it are left out
    graph = {m: {d for d in deps if not (m.startswith(d + ".") and _is_package(d))}
             for m, deps in GRAPH.items()}
    circles = _cycles(graph)
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_modules_are_small():
    big = sorted(f"{p.relative_to(ROOT)}: {n} lines" for p in MODULES.values()
                 if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES)
    assert not big, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(big)


def test_long_functions_say_why():
    bad = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            doc = ast.get_docstring(node) or ""
            if length > MAX_FUNCTION_LINES and "Long because" not in doc:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not bad, ("functions over %d lines without a 'Long because' in the docstring:\n"
                     % MAX_FUNCTION_LINES) + "\n".join(sorted(bad))


def test_packages_say_what_they_hold():
    bad = []
    for name, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        opening = " ".join(doc.split("\n\n")[:2])  # the summary line and one paragraph
        if "import" not in opening:
            bad.append(f"{path.relative_to(ROOT)}: its docstring must open by saying what it "
                       "holds and what it may import")
    assert not bad, "\n".join(bad)
