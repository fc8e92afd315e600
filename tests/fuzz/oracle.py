"""The wire fuzz's local oracle: what a daemon must answer to frames whose outcome is known.

Frames are decoded here the way a daemon decodes them; garbage must get an
``ErrorReply`` INVALID_ARGUMENT carrying the recoverable request id, a type the
daemon does not accept must get INVALID_ARGUMENT, a read-only query its reply
(or a typed error that is not INTERNAL), and a message that is never answered
must get nothing. Anything whose answer depends on live state gets no
expectation. Used by harness.py.
"""

from __future__ import annotations

import sys

from spear import errors, protocol as P
from spear.mesh.router import request_id_of

# ------------------------------------------------------------------ what the daemons accept

_SMS_ACCEPTS = {P.Ping, P.Register, P.Heartbeat, P.Deregister, P.ListNodes, P.GetNode,
                P.DeployFunction, P.RemoveFunction, P.ListFunctions, P.GetFunction,
                P.FetchFunction, P.Invoke, P.GetExecution, P.CancelExecution, P.ListExecutions,
                P.Result, P.LogChunk, P.ErrorReply, P.Ok, P.Subscribe, P.Unsubscribe, P.Stats,
                P.DrainNode}
_NODE_ACCEPTS = {P.Ping, P.DeployFunction, P.RemoveFunction, P.ListFunctions, P.Invoke,
                 P.GetExecution, P.CancelExecution}
ACCEPTS = {"sms": _SMS_ACCEPTS, "node": _NODE_ACCEPTS}
#: accepted but never answered
SILENT = {"sms": {P.Result, P.LogChunk, P.ErrorReply, P.Ok}, "node": set()}
#: read-only requests with a deterministic reply type (or a typed error)
QUERIES = {
    "sms": {P.Ping: (P.Pong,), P.ListNodes: (P.NodeList,), P.GetNode: (P.NodeReply,),
            P.ListFunctions: (P.FunctionList,), P.GetFunction: (P.FunctionReply,),
            P.FetchFunction: (P.FunctionReply,), P.ListExecutions: (P.ExecutionList,),
            P.Stats: (P.StatsReply,), P.Unsubscribe: (P.Ok,), P.GetExecution: (P.Result,)},
    "node": {P.Ping: (P.Pong,), P.ListFunctions: (P.FunctionList,),
             P.GetExecution: (P.Result,)},
}

# ------------------------------------------------------------------ local oracle


class Expect:
    """What one frame list sent on an oracle socket must (or may) get back."""

    __slots__ = ("kind", "rid", "types", "label", "matched")

    def __init__(self, kind: str, rid: int = 0, types: tuple = (), label: str = "") -> None:
        self.kind = kind  # "error" | "maybe" | "query" | "none"
        self.rid = rid
        self.types = types
        self.label = label
        self.matched = False

    def accepts(self, msg, payload) -> bool:
        if self.kind == "none" or getattr(msg, "id", None) != self.rid:
            return False
        if self.kind in ("error", "maybe"):
            return (isinstance(msg, P.ErrorReply) and msg.code == "INVALID_ARGUMENT"
                    and bool(msg.message) and payload is None)
        if isinstance(msg, P.ErrorReply):
            return msg.code in errors.CODES and msg.code != "INTERNAL"
        return isinstance(msg, self.types)

    def __repr__(self) -> str:
        return f"Expect({self.kind}, id={self.rid}, {self.label})"


#: recursion headroom around a daemon's (its limit is 1000 minus ~30 frames of stack)
LOW_HEADROOM, HIGH_HEADROOM = 300, 1500
AMBIGUOUS = object()


def _stack_depth() -> int:
    f, n = sys._getframe(1), 0
    while f is not None:
        n += 1
        f = f.f_back
    return n


def _decode_with_headroom(frames: list, headroom: int):
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(_stack_depth() + headroom)
    try:
        msg, payload = P.decode(frames)
        return msg, payload, None
    except Exception as exc:  # noqa: BLE001 - classified by the caller
        return None, None, exc
    finally:
        sys.setrecursionlimit(old)


SPECIFICITY = {"error": 0, "query": 1, "maybe": 2, "none": 3}


def local_decode(frames: list):
    """(message, payload, exception) as the daemons' decoder sees these frames.

    msgspec's depth limit is the interpreter's recursion limit minus the stack in
    use, which differs between this process (inside hypothesis) and a daemon.
    Frames are decoded with less room than a daemon has and, if that hits the
    limit, with more: when the two disagree the outcome depends on the stack and
    the exception is ``AMBIGUOUS`` (never used for an oracle check).
    """
    msg, payload, exc = _decode_with_headroom(frames, LOW_HEADROOM)
    if not isinstance(exc, RecursionError):
        return msg, payload, exc
    msg, payload, exc = _decode_with_headroom(frames, HIGH_HEADROOM)
    if isinstance(exc, RecursionError):
        return None, None, exc
    return msg, payload, AMBIGUOUS


def expectation(target: str, frames: list, msg, exc) -> Expect | None:
    """The deterministic outcome of ``frames`` at ``target``, or None if it depends on state."""
    if exc is AMBIGUOUS:
        return None
    if exc is not None:
        rid = request_id_of(frames)
        if isinstance(exc, errors.ProtocolError):
            return Expect("error", rid, label="garbage")
        # a decoder finding (test_protocol.py::test_undecodable_frame_is_answered): may go unanswered
        return Expect("maybe", rid, label=type(exc).__name__)
    t = type(msg)
    if t not in ACCEPTS[target]:
        if t is P.ErrorReply:
            return Expect("none", label="error-reply")
        return Expect("error", msg.id, label=f"unaccepted {t.__name__}")
    if t in SILENT[target]:
        return Expect("none", label=f"silent {t.__name__}")
    types = QUERIES[target].get(t)
    if types is not None:
        if t is P.GetExecution and msg.wait > 0:
            return None
        return Expect("query", msg.id, types, label=t.__name__)
    return None
