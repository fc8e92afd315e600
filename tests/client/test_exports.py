"""The names ``spear`` exports, and that ``import spear`` alone stays light."""

from __future__ import annotations

import subprocess
import sys

import spear


def test_public_names_import_from_spear():
    from spear import (AsyncClient, Client, ExecutionInfo, ExecutionResult, FunctionInfo,
                       FunctionSpec, Limits, NodeInfo, PoolSettings, errors)
    from spear import client, protocol as P

    assert (Client, AsyncClient, ExecutionResult) == (client.Client, client.AsyncClient,
                                                      client.ExecutionResult)
    assert (FunctionSpec, Limits, PoolSettings, ExecutionInfo, NodeInfo, FunctionInfo) == (
        P.FunctionSpec, P.Limits, P.PoolSettings, P.ExecutionInfo, P.NodeInfo, P.FunctionInfo)
    assert errors.SpearError is spear.errors.SpearError
    for name in spear.__all__:
        assert getattr(spear, name) is not None, name


def test_unknown_name_is_an_attribute_error():
    try:
        spear.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("spear.NoSuchThing resolved")


def test_import_spear_alone_does_not_import_zmq_or_the_client():
    code = ("import sys, spear; "
            "print(sorted(m for m in ('zmq', 'spear.client', 'spear.mesh') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    # a type of the wire does not pull in the client either
    code = ("import sys; from spear import FunctionSpec; "
            "print('zmq' in sys.modules, 'spear.client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False False", out.stderr
