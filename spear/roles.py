"""Roles: who may send which message, the one table every daemon and the gateway use.

A caller's role comes from its CURVE key (the ZAP ``User-Id``, on the SMS's
and each Spearlet's ROUTER) or from its bearer token (on the gateway, whose
routes each name the protocol message they stand for). Either way the
decision is :func:`allowed`. This module imports only :mod:`spear.protocol`
and :mod:`spear.errors`.

* ``admin``: everything the others may do.
* ``deployer``: deploy and remove functions, cancel executions, drain nodes,
  and every read-only view (the operator's role).
* ``invoker``: invoke and cancel executions, and every read-only view.
* ``viewer``: the read-only views (nodes, functions, executions, events, stats).
* ``node``: the Spearlet side of the SMS protocol, nothing else.
"""

from __future__ import annotations

import msgspec

from . import protocol as P

#: every role a key or token may hold, in the order of ``[security]``'s lists
ROLES = ("admin", "deployer", "invoker", "viewer", "node")

_VIEW = frozenset({P.Ping, P.ListNodes, P.GetNode, P.ListFunctions, P.GetFunction,
                   P.GetExecution, P.ListExecutions, P.Subscribe, P.Unsubscribe, P.Stats})
_NODE = frozenset({P.Ping, P.Register, P.Heartbeat, P.Deregister, P.FetchFunction, P.Result,
                   P.LogChunk, P.ErrorReply, P.Ok})

#: role -> the message types a caller with that role may send
ALLOWED: dict[str, frozenset[type]] = {
    "viewer": _VIEW,
    "invoker": _VIEW | {P.Invoke, P.CancelExecution},
    "deployer": _VIEW | {P.DeployFunction, P.RemoveFunction, P.CancelExecution, P.DrainNode},
    "node": _NODE,
}
ALLOWED["admin"] = frozenset().union(*ALLOWED.values())


def allowed(role: str, msg_type: type) -> bool:
    """May a caller with ``role`` send a message of ``msg_type``? Unknown roles may not."""
    return msg_type in ALLOWED.get(role, ())


# ---------------------------------------------------------------- what a role may see

#: What a redacted environment value reads as.
REDACTED = "<redacted>"
#: What a value marked secret reads as, for every role.
SECRET = "<secret>"
#: Roles that see non-secret environment values ("" = an open cluster, no CURVE).
ENV_READERS = frozenset({"admin", "deployer", ""})


def redact_spec(spec: P.FunctionSpec, role: str) -> P.FunctionSpec:
    """``spec`` as a caller with ``role`` may see it: the one place that decides.

    Values named in ``secret_env`` are never shown, to any role; every other
    value is shown only to ``admin`` and ``deployer`` (and on an open cluster,
    where there are no roles). Keys stay visible so callers can tell what is set.
    """
    if not spec.env:
        return spec
    secret = set(spec.secret_env)
    if role in ENV_READERS:
        if not secret:
            return spec
        env = {k: (SECRET if k in secret else v) for k, v in spec.env.items()}
    else:
        env = {k: (SECRET if k in secret else REDACTED) for k in spec.env}
    return msgspec.structs.replace(spec, env=env)
