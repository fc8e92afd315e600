"""The role table: one decision for CURVE keys (mesh router) and bearer tokens (gateway)."""

from __future__ import annotations

import pytest

from spear import protocol as P
from spear.roles import ALLOWED, ROLES, allowed

READ_ONLY = (P.Ping, P.ListNodes, P.GetNode, P.ListFunctions, P.GetFunction, P.GetExecution,
             P.ListExecutions, P.Subscribe, P.Unsubscribe, P.Stats)


def test_every_role_has_a_row_and_admin_may_do_what_any_other_may():
    assert set(ALLOWED) == set(ROLES)
    for role in ROLES:
        assert ALLOWED[role] <= ALLOWED["admin"]


@pytest.mark.parametrize("role", ["viewer", "invoker", "deployer", "admin"])
def test_every_client_role_may_read(role):
    assert all(allowed(role, t) for t in READ_ONLY)


def test_writes_by_role():
    assert allowed("invoker", P.Invoke) and allowed("invoker", P.CancelExecution)
    assert not allowed("invoker", P.DeployFunction)
    assert allowed("deployer", P.DeployFunction) and allowed("deployer", P.RemoveFunction)
    assert not allowed("deployer", P.Invoke)
    # operators: the admin page's cancel and drain buttons
    assert allowed("deployer", P.CancelExecution) and allowed("deployer", P.DrainNode)
    assert allowed("admin", P.DrainNode) and not allowed("invoker", P.DrainNode)
    assert not any(allowed("viewer", t) for t in (P.Invoke, P.DeployFunction, P.RemoveFunction,
                                                  P.CancelExecution, P.DrainNode))


def test_a_node_speaks_only_the_node_side_of_the_protocol():
    assert allowed("node", P.Register) and allowed("node", P.Result)
    assert not allowed("node", P.Invoke) and not allowed("node", P.ListFunctions)
    assert not any(allowed(role, P.Register) for role in ("viewer", "invoker", "deployer"))


@pytest.mark.parametrize("role", ["", "root", "ADMIN", "admin "])
def test_an_unknown_role_may_do_nothing(role):
    assert not any(allowed(role, t) for t in (*READ_ONLY, P.Invoke, P.Register))


def test_roles_imports_only_the_protocol_and_errors():
    import ast
    from pathlib import Path

    import spear.roles

    tree = ast.parse(Path(spear.roles.__file__).read_text())
    spear_imports = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.level:
            spear_imports |= {n.module} if n.module else {a.name for a in n.names}
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names = [n.module] if isinstance(n, ast.ImportFrom) else [a.name for a in n.names]
            spear_imports |= {m.split(".", 1)[1] for m in names if m.startswith("spear.")}
    assert spear_imports <= {"protocol", "errors"}
