"""The command line's import graph: no circle among its modules, and nothing in spear imports bench/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPEAR = ROOT / "spear"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code, as absolute names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            mod = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def test_nothing_in_spear_imports_bench():
    offenders = [str(p.relative_to(ROOT)) for p in SPEAR.rglob("*.py")
                 if any(m == "bench" or m.startswith("bench.") for m in _imports(p))]
    assert offenders == []


def test_cli_modules_import_no_circle():
    files = {_module_name(p): p for p in (SPEAR / "cli").glob("*.py")}
    graph = {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    circles = sorted(m for m in graph if m in reach(m))
    assert circles == []


def test_command_modules_import_only_the_shared_helpers():
    """A command module imports ``_base`` and ``_output``, never the package nor another command."""
    shared = {"spear.cli._base", "spear.cli._output"}
    for p in (SPEAR / "cli").glob("*.py"):
        if p.name == "__init__.py":
            continue
        inside = {i for i in _imports(p) if i == "spear.cli" or i.startswith("spear.cli.")}
        inside = {i for i in inside if not any(i.startswith(s) for s in shared)}
        assert inside == set(), f"{p.name} imports {sorted(inside)}"
