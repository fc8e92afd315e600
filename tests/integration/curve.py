"""CURVE keys and per-role configs for the security and identity tests.

:data:`ROLES` names one key holder per client role; the ``keys`` fixture
(tests/integration/conftest.py) makes a key pair for each of them, the SMS,
two nodes and an outsider (``mallory``). :func:`curve_config` writes the
``[security]`` section one of them runs with; :func:`client_for` opens a
client with it.
"""

from __future__ import annotations

from pathlib import Path

from spear import Client
from spear.config import load_config

#: key holder -> role (one per client role)
ROLES = {"alice": "admin", "dave": "deployer", "ivan": "invoker", "vera": "viewer"}
#: everyone the ``keys`` fixture makes a key pair for
KEY_HOLDERS = ("sms", "node1", "node2", "mallory", *ROLES)


def _toml_list(paths) -> str:
    return "[" + ", ".join(f'"{p}"' for p in paths) + "]"


def curve_config(path: Path, keys, own: str) -> str:
    """Write a config at ``path`` for ``own``'s key (roles of ROLES, node1 and node2
    as nodes, the SMS's public key) and return its path as text."""
    role_lines = "\n".join(
        f"{role} = {_toml_list([keys[n][0] for n, r in ROLES.items() if r == role])}"
        for role in ("admin", "deployer", "invoker", "viewer"))
    path.write_text(
        f'[security]\nkey = "{keys[own][1]}"\nsms_key = "{keys["sms"][0]}"\n'
        f'{role_lines}\nnode = {_toml_list([keys["node1"][0], keys["node2"][0]])}\n')
    return str(path)


def client_for(secure, keys, who: str, timeout: float = 3.0) -> Client:
    """A client of the cluster ``secure`` (a ``(Cluster, dir)`` pair) with ``who``'s key."""
    c, d = secure
    cfg = load_config(curve_config(d / f"{who}.toml", keys, who), env={})
    return Client(c.sms_addr, timeout=timeout, security=cfg.security)
