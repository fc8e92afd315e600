"""The vocabulary of :class:`~spear.spearlet.core.SpearletCore`: events in, instructions out.

Events say what happened (a client's Invoke, an SMS Dispatch, a runtime
outcome, a log chunk, a heartbeat due or acknowledged); instructions say
what the driver must do. They are msgspec Structs: made on every call of
the hot path, and several times cheaper to make than dataclasses.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .. import errors, protocol as P

_NO_USAGE = P.ExecUsage()

# ---------------------------------------------------------------- events


class Invoked(msgspec.Struct):
    """A client's Invoke arrived on the ROUTER (the direct path)."""

    ident: bytes
    msg: P.Invoke
    payload: Any = None


class Dispatched(msgspec.Struct):
    """The SMS placed an execution on this node."""

    msg: P.Dispatch
    payload: Any = None


class Ensured(msgspec.Struct):
    """The function of a dispatched execution is deployed at the SMS's
    version, or could not be (``error``)."""

    execution_id: str
    error: errors.SpearError | None = None


class Finished(msgspec.Struct):
    """A runtime outcome: the execution ended (any status); durations in seconds."""

    execution_id: str
    status: str
    output: bytes = b""
    error: P.ErrorInfo | None = None
    exit_code: int | None = None
    usage: P.ExecUsage = _NO_USAGE
    queue: float = 0.0
    cold: float = 0.0
    run: float = 0.0
    total: float = 0.0
    #: answered at once on a warm instance (no record is kept of it)
    inline: bool = False


class Logged(msgspec.Struct):
    """A running execution wrote ``data`` to its log (stream mode)."""

    execution_id: str
    data: bytes


class CancelAsked(msgspec.Struct):
    """CancelExecution from a client (``ident``) or from the SMS (``ident`` None)."""

    msg: P.CancelExecution
    ident: bytes | None = None


class Asked(msgspec.Struct):
    """GetExecution from a client."""

    ident: bytes
    msg: P.GetExecution


class Deployed(msgspec.Struct):
    """The driver installed ``spec``; ``digest`` is the runtime's, ``sms_digest``
    the SMS's name of the version (empty for a direct deploy)."""

    spec: P.FunctionSpec
    digest: str
    sms_digest: str = ""


class RemoveAsked(msgspec.Struct):
    """RemoveFunction from a client (``ident``) or from the SMS (``ident`` None)."""

    name: str
    ident: bytes | None = None
    msg_id: int = 0


class Welcomed(msgspec.Struct):
    """The SMS registered this node; every heartbeat carries ``session``."""

    session: int


class HeartbeatDue(msgspec.Struct):
    """Time for a heartbeat: ``msg_id`` from the link, ``usage`` of the node."""

    msg_id: int
    usage: P.Usage


class HeartbeatAcked(msgspec.Struct):
    """The answer to the heartbeat sent in ``session`` with sequence ``seq``."""

    ack: Any
    session: int
    seq: int


class Drain(msgspec.Struct):
    """The node is stopping: refuse new work."""


# ---------------------------------------------------------------- instructions


class Reply(msgspec.Struct):
    """Send ``msg`` (and ``payload``) to the direct client ``ident``."""

    ident: bytes
    msg: Any
    payload: Any = None


class ToSMS(msgspec.Struct):
    """Send ``msg`` (and ``payload``) to the SMS over the link."""

    msg: Any
    payload: Any = None


class Start(msgspec.Struct):
    """Run an execution on its function's runtime with ``limits``.

    ``inline``: the driver may answer at once on a warm instance (then it
    feeds back ``Finished(inline=True)`` before anything else). ``stream``:
    feed the function's log as :class:`Logged` events.
    """

    execution_id: str
    function: str
    data: Any
    args: list
    limits: P.Limits
    inline: bool = False
    stream: bool = False
    trace_id: str = ""  # tags the lines logged while it runs (spear.logs.bind)
    #: W3C context the function sees as TRACEPARENT / TRACESTATE
    traceparent: str = ""
    tracestate: str = ""


class Cancel(msgspec.Struct):
    """Cancel the execution if it still runs (its :class:`Finished` follows)."""

    execution_id: str


class Ensure(msgspec.Struct):
    """Deploy version ``digest`` of ``function`` (fetched from the SMS) unless
    it is the one deployed, then feed :class:`Ensured`."""

    execution_id: str
    function: str
    digest: str


class Remove(msgspec.Struct):
    """Uninstall ``name`` (its pool); answer ``Ok`` to ``ident`` if a client asked."""

    name: str
    ident: bytes | None = None
    msg_id: int = 0


class Wait(msgspec.Struct):
    """Feed ``Asked(ident, msg)`` again, with no wait, once the execution
    ends or ``msg.wait`` seconds passed."""

    ident: bytes
    msg: P.GetExecution


class SendHeartbeat(msgspec.Struct):
    """Send ``msg`` as a request; feed its answer as ``HeartbeatAcked(ack, session, seq)``."""

    msg: P.Heartbeat
    session: int
    seq: int


class Reregister(msgspec.Struct):
    """The SMS does not know this node's session: register again."""
