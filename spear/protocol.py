"""The Spear wire protocol: the single source of truth for every message.

Frames on every socket (a ROUTER adds its peer identity in front)::

    +-----------+----------------------+---------------------------+
    | "SPEAR/2" | msgpack(Message)     | [payload]  (optional)     |
    | version   | tagged msgspec Struct| raw bytes, never decoded  |
    +-----------+----------------------+---------------------------+

* Frame 0 is the protocol and version, so a peer can validate a message even
  after a silent reconnect (the Majordomo habit).
* Frame 1 is one Struct of the ``Message`` union, tagged by its class name
  in field ``t``. Decoding is strict: wrong types are refused, not coerced.
* Frame 2, when present, is an opaque payload (function input or output,
  artifact bytes). It travels as-is and is never re-encoded.
* Every request carries ``id`` (a request id chosen by the sender); every
  reply echoes it. Messages that are not requests (heartbeats, log chunks of
  a stream) still carry the id of the exchange they belong to.
* Errors are ``ErrorReply`` with a stable code from :mod:`spear.errors`.

Schema evolution: new fields get defaults; a field's type never changes.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import msgspec
from msgspec import Meta, Struct

from . import errors
# the records of nodes and functions are wire types too: callers find them here
from .schema import (MAX_OUTPUT_MB, Capacity, FunctionSpec, Limits, Name, NodeId, NodeInfo,
                     NodeState, NonNeg, PoolSettings, Runtime, Text, Usage)

#: Frame 0 of every message. Version 2: routing ids are no longer node ids,
#: execution ids are UUIDv7, trace ids are restricted to printable tokens and
#: functions may mark environment values secret.
PROTOCOL = b"SPEAR/2"
#: Largest encoded message body (frame 1). Payload frames have their own cap.
MAX_BODY = 4 * 1024 * 1024
#: Largest payload frame (frame 2) accepted on any socket.
MAX_PAYLOAD = MAX_OUTPUT_MB << 20

#: A trace id: a printable token (W3C traceparent fits), never CR/LF or spaces,
#: so it can go into headers and log lines as it is. W3C tracestate: printable, bounded.
TraceId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9._:/+=\-]{0,128}\Z")]
TraceState = Annotated[str, Meta(pattern=r"^[\x20-\x7e]{0,512}\Z")]
ExecStatus = Literal["pending", "scheduled", "running",  # running: started on a node
                     "succeeded", "failed", "cancelled", "timed_out", "lost"]
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out", "lost"})
#: a node's registration session, chosen by the SMS (0: none, a peer older than sessions)
Session = Annotated[int, Meta(ge=0, le=2**63 - 1)]
#: execution ids listed in a heartbeat or its ack (each list bounded; see the Spearlet)
ExecIdList = Annotated[list[Annotated[str, Meta(max_length=128)]], Meta(max_length=100_000)]


class _Msg(Struct, frozen=True, tag_field="t", tag=True, kw_only=True, omit_defaults=True):
    """Base of wire messages: frozen, tagged by class name."""


# ---------------------------------------------------------------- shared types
# (a node's and a function's records are in spear.schema)


class Timings(Struct, frozen=True, kw_only=True):
    """Where an execution's time went, in seconds."""

    queue: float = 0.0
    cold_start: float = 0.0
    run: float = 0.0
    total: float = 0.0


class ExecUsage(Struct, frozen=True, kw_only=True):
    """What an execution consumed."""

    cpu_time: float = 0.0
    peak_memory: int = 0
    fuel: int = 0


class ErrorInfo(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A typed error inside a result (not a failed request)."""

    code: str
    message: str
    stderr_tail: Text = ""  # the end of a failed process's, container's or command's stderr
    traceback: Annotated[str, Meta(max_length=8192)] = ""  # a Python handler's, to the raise


class ExecutionInfo(Struct, frozen=True, kw_only=True):
    """The record of one execution (output travels as the payload frame)."""

    execution_id: str
    function: str
    status: ExecStatus
    node_id: str = ""
    error: ErrorInfo | None = None
    exit_code: int | None = None
    timings: Timings = Timings()
    usage: ExecUsage = ExecUsage()
    trace_id: TraceId = ""
    submitted_at: float = 0.0
    finished_at: float = 0.0
    cold: bool = False
    attempts: int = 0
    args: list[int | float] = []


# ------------------------------------------------------------- any direction


class ErrorReply(_Msg, frozen=True):
    """Sent by any daemon instead of the normal reply when a request fails."""

    id: int
    code: str
    message: str
    details: dict[str, str] = {}


class Ok(_Msg, frozen=True):
    """Generic acknowledgement of a request that returns nothing."""

    id: int


class Ping(_Msg, frozen=True):
    """Client -> any daemon: liveness probe."""

    id: int


class Pong(_Msg, frozen=True):
    """Daemon -> client: answer to Ping, with who answered."""

    id: int
    role: str
    node_id: str = ""
    version: str = ""


# ---------------------------------------------------------------- node -> SMS


class Register(_Msg, frozen=True):
    """Spearlet -> SMS: (re)register this node; sent on start and after reconnect.

    ``proof``: a secret the node keeps in its data directory. Without CURVE
    the SMS binds the node id to it on first registration, so no other peer
    can re-register under that id (with CURVE the key is the identity).
    """

    id: int
    node: NodeInfo
    proof: Annotated[str, Meta(max_length=128)] = ""


class Heartbeat(_Msg, frozen=True):
    """Spearlet -> SMS: periodic liveness with current usage.

    ``session`` is the token of the node's registration (from ``Welcome``): a
    heartbeat of another session, or of one that ended, changes nothing and
    is answered ``known=False``. ``finished``: executions the SMS dispatched
    here whose ``Result`` the node has sent but the SMS has not confirmed;
    the ``HeartbeatAck`` says which the SMS has (``acked``) and which it
    lacks (``resend``), and until then they count as still running here.
    """

    id: int
    node_id: NodeId
    usage: Usage
    running_ids: list[str] = []  # executions dispatched by the SMS still running here
    session: Session = 0
    finished: ExecIdList = []


class Deregister(_Msg, frozen=True):
    """Spearlet -> SMS: this node is leaving (graceful stop)."""

    id: int
    node_id: NodeId


# ---------------------------------------------------------------- SMS -> node


class Welcome(_Msg, frozen=True):
    """SMS -> Spearlet: registration accepted; the SMS sets the heartbeat rate."""

    id: int
    node_id: str
    heartbeat_interval: float
    heartbeat_timeout: float
    session: Session = 0  # the token this node's heartbeats carry until it registers again


class HeartbeatAck(_Msg, frozen=True):
    """SMS -> Spearlet: heartbeat seen. ``known=False`` asks it to register again.

    Of the heartbeat's ``finished`` executions: ``acked`` are ones whose result the SMS
    has (or that it no longer knows): the node forgets them; ``resend`` are ones still
    open at the SMS: the node sends their ``Result`` again.
    """

    id: int
    known: bool = True
    acked: ExecIdList = []
    resend: ExecIdList = []


# ------------------------------------------------------------- client -> SMS


class ListNodes(_Msg, frozen=True):
    """Client -> SMS: list nodes, optionally only those in one state."""

    id: int
    state: NodeState | None = None


class GetNode(_Msg, frozen=True):
    """Client -> SMS: one node by id or name."""

    id: int
    node_id: str


# ------------------------------------------------------------- SMS -> client


class NodeList(_Msg, frozen=True):
    """SMS -> client: reply to ListNodes."""

    id: int
    nodes: list[NodeInfo]


class NodeReply(_Msg, frozen=True):
    """SMS -> client: reply to GetNode."""

    id: int
    node: NodeInfo


# ------------------------------------------------- client -> Spearlet (direct)


class DeployFunction(_Msg, frozen=True):
    """Client -> Spearlet: install a function on this node and pre-warm its pool."""

    id: int
    spec: FunctionSpec


class RemoveFunction(_Msg, frozen=True):
    """Client -> Spearlet: remove a function and destroy its instances."""

    id: int
    name: Name


class ListFunctions(_Msg, frozen=True):
    """Client -> Spearlet: the functions deployed on this node."""

    id: int


class Invoke(_Msg, frozen=True):
    """Client -> Spearlet: run a function. Input is the payload frame.

    ``mode``: ``sync`` answers with ``Result``; ``async`` answers at once with
    ``Accepted``; ``stream`` sends ``LogChunk`` messages then ``Result``.
    """

    id: int
    function: Name
    args: list[int | float] = []
    mode: Literal["sync", "async", "stream"] = "sync"
    timeout: Annotated[float, Meta(gt=0, le=86400)] | None = None
    trace_id: TraceId = ""
    traceparent: TraceId = ""  # W3C trace context (spear.tracing): a bad one starts a new trace
    tracestate: TraceState = ""
    #: refused by the SMS and by a Spearlet's direct path alike: execution ids
    #: are the receiver's to choose (unguessable); kept for the wire's shape
    execution_id: Annotated[str, Meta(max_length=128)] = ""
    #: a repeated submission with the same key (from the same caller) returns
    #: the first execution instead of starting another, across SMS restarts
    idempotency_key: Annotated[str, Meta(pattern=r"^[\x21-\x7e]{0,128}\Z")] = ""


class GetExecution(_Msg, frozen=True):
    """Client -> daemon: the current record of an execution (output as payload)."""

    id: int
    execution_id: str
    wait: Annotated[float, Meta(ge=0, le=86400)] = 0.0
    follow: bool = False  # with wait: the SMS relays its LogChunks (stream mode) before Result


class CancelExecution(_Msg, frozen=True):
    """Client -> daemon: cancel an execution that has not finished."""

    id: int
    execution_id: str


# ------------------------------------------------- Spearlet -> client (direct)


class FunctionInfo(Struct, frozen=True, kw_only=True):
    """A deployed function and its pool figures on one node."""

    name: str
    runtime: str
    digest: str = ""
    warm: int = 0
    busy: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class Deployed(_Msg, frozen=True):
    """Spearlet -> client: the function is installed (and pre-warmed)."""

    id: int
    function: FunctionInfo


class FunctionList(_Msg, frozen=True):
    """Spearlet -> client: reply to ListFunctions."""

    id: int
    functions: list[FunctionInfo]


class Accepted(_Msg, frozen=True):
    """Daemon -> client: an async invocation was accepted."""

    id: int
    execution_id: str


class LogChunk(_Msg, frozen=True):
    """Daemon -> client: one chunk of a streamed execution's logs (stderr)."""

    id: int
    execution_id: str
    data: bytes
    seq: int = 0


class Result(_Msg, frozen=True):
    """Daemon -> client: the final record of an execution; output is the payload."""

    id: int
    execution: ExecutionInfo


# ------------------------------------------------------- SMS <-> node (tasks)


class Dispatch(_Msg, frozen=True):
    """SMS -> Spearlet: run one execution; input is the payload.

    The node answers with ``Result`` (same id), preceded by ``LogChunk``
    messages when ``stream`` is set. ``digest`` tells the node which version
    of the function to run; a node that lacks it sends ``FetchFunction``.
    """

    id: int
    execution_id: str
    function: Name
    digest: str
    args: list[int | float] = []
    timeout: float | None = None
    trace_id: TraceId = ""
    stream: bool = False
    traceparent: TraceId = ""  # the SMS's dispatch span: the parent of the node's spans
    tracestate: TraceState = ""


class FetchFunction(_Msg, frozen=True):
    """Spearlet -> SMS: send me the full spec (artifact included) of a function."""

    id: int
    name: Name


class FunctionReply(_Msg, frozen=True):
    """SMS -> Spearlet or client: one function's spec (reply to Fetch/GetFunction)."""

    id: int
    spec: FunctionSpec
    digest: str = ""


class GetFunction(_Msg, frozen=True):
    """Client -> SMS: one registered function (without its artifact bytes)."""

    id: int
    name: Name


class ListExecutions(_Msg, frozen=True):
    """Client -> SMS: executions, newest first, filtered, one page at a time.

    ``since``/``until`` bound the submission time (Unix seconds, 0: open);
    ``prefix`` keeps the ids that start with it (dashes not counted);
    ``cursor`` (a page's ``next_cursor``) starts right after that page, so
    executions submitted meanwhile shift no page (``offset`` counts from it).
    """

    id: int
    function: str = ""
    status: ExecStatus | None = None
    node_id: str = ""
    limit: Annotated[int, Meta(ge=1, le=10000)] = 100
    offset: Annotated[int, Meta(ge=0)] = 0
    since: NonNeg = 0.0
    until: NonNeg = 0.0
    prefix: Annotated[str, Meta(pattern=r"^[0-9a-f\-]{0,36}\Z")] = ""
    cursor: Annotated[str, Meta(max_length=80)] = ""


class ExecutionList(_Msg, frozen=True):
    """SMS -> client: one page of executions, how many matched the filters (cursor
    aside), and the cursor of the next page ("" after the last one)."""

    id: int
    executions: list[ExecutionInfo]
    total: int = 0
    next_cursor: str = ""


class Subscribe(_Msg, frozen=True):
    """Client -> SMS: stream node and execution events with seq > ``since``.

    The SMS answers with ``Event`` messages carrying this request's id until
    the client sends ``Unsubscribe`` or goes away; resume after a reconnect
    by subscribing again from the last seq seen.
    """

    id: int
    since: Annotated[int, Meta(ge=0)] = 0


class Unsubscribe(_Msg, frozen=True):
    """Client -> SMS: stop the event stream started by request ``id``."""

    id: int


class Event(_Msg, frozen=True):
    """SMS -> client: one node or execution event of a subscription."""

    id: int
    seq: int
    kind: Literal["node", "execution", "function"]
    key: str
    state: str
    ts: float
    detail: str = ""


class Stats(_Msg, frozen=True):
    """Client -> SMS: cluster resource totals and scheduler figures.

    With a ``window`` (seconds), also per-function figures of the executions
    submitted in the last ``window`` seconds, cut in ``slices`` equal slices
    (only ``function``'s, if named).
    """

    id: int
    window: Annotated[float, Meta(ge=0, le=30 * 86400)] = 0.0
    slices: Annotated[int, Meta(ge=1, le=360)] = 12
    function: str = ""


class StatSlice(Struct, frozen=True, kw_only=True):
    """Executions submitted from ``start`` on: how many, how many failed (failed,
    timed out or lost) or started cold, and their duration (submitted to finished,
    seconds) at the 50th and 99th percentile (None: none finished yet)."""

    start: float = 0.0
    calls: int = 0
    errors: int = 0
    cold: int = 0
    p50: float | None = None
    p99: float | None = None


class FunctionStat(Struct, frozen=True, kw_only=True):
    """One function's figures over a Stats window: the whole window (``active``: of
    those, not finished yet), then slice by slice, oldest first."""

    name: str
    total: StatSlice = StatSlice()
    active: int = 0
    slices: list[StatSlice] = []


class StatsReply(_Msg, frozen=True):
    """SMS -> client: totals, reservations and execution counts."""

    id: int
    nodes_ready: int
    cores_total: float
    memory_total: int
    cores_reserved: float
    memory_reserved: int
    executions_active: int
    counts: dict[str, int] = {}
    functions: list[FunctionStat] = []  # with a window: functions by name
    queued: int = 0                     # executions waiting for capacity (no node fits now)
    queued_cores: float = 0.0           # the cores those ask for together


class DrainNode(_Msg, frozen=True):
    """Client -> SMS: place no new work on a node (``drain=False``: resume). Its work
    in flight finishes; it stays ``draining`` across its reconnects. Answer: NodeReply."""

    id: int
    node_id: str
    drain: bool = True


Message = Union[
    ErrorReply, Ok, Ping, Pong,                                     # any direction
    Register, Heartbeat, Deregister, Welcome, HeartbeatAck,         # node <-> SMS
    ListNodes, GetNode, NodeList, NodeReply,                        # client <-> SMS
    DeployFunction, RemoveFunction, ListFunctions, Invoke, GetExecution, CancelExecution,
    Deployed, FunctionList, Accepted, LogChunk, Result,             # client <-> Spearlet/SMS
    Dispatch, FetchFunction, FunctionReply, GetFunction,            # SMS <-> node (tasks)
    ListExecutions, ExecutionList, Subscribe, Unsubscribe, Event, Stats, StatsReply,
    DrainNode]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(msg: _Msg, payload: bytes | memoryview | None = None) -> list:
    """Frames for one message: ``[PROTOCOL, body]`` plus the raw payload if any."""
    body = _encoder.encode(msg)
    if payload is None:
        return [PROTOCOL, body]
    return [PROTOCOL, body, payload]


def decode(frames: list) -> tuple[_Msg, bytes | None]:
    """Decode ``[PROTOCOL, body, payload?]``; raise ProtocolError on anything else."""
    n = len(frames)
    if n < 2 or n > 3:
        raise errors.ProtocolError(f"expected 2 or 3 frames, got {n}")
    if bytes(frames[0]) != PROTOCOL:
        raise errors.ProtocolError(f"unsupported protocol/version {bytes(frames[0])[:32]!r}")
    body = frames[1]
    if len(body) > MAX_BODY:
        raise errors.ProtocolError(f"message body of {len(body)} bytes exceeds {MAX_BODY}")
    payload = None
    if n == 3:
        payload = frames[2]
        if len(payload) > MAX_PAYLOAD:
            raise errors.ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        return _decoder.decode(body), payload
    except msgspec.ValidationError as exc:
        raise errors.ProtocolError(f"invalid message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise errors.ProtocolError(f"undecodable message: {exc}") from None
    except (RecursionError, UnicodeDecodeError, ValueError, OverflowError) as exc:
        # msgspec raises these plain errors for deep nesting and bad UTF-8
        raise errors.ProtocolError(f"undecodable message: {type(exc).__name__}") from None


def error_reply(rid: int, exc: BaseException) -> ErrorReply:
    """Turn any exception into an ErrorReply (unknown ones become INTERNAL)."""
    if isinstance(exc, errors.SpearError):
        return ErrorReply(id=rid, code=exc.code, message=exc.message)
    return ErrorReply(id=rid, code="INTERNAL", message=f"{type(exc).__name__}: {exc}")


def raise_for(msg: _Msg) -> None:
    """Raise the typed SpearError an ErrorReply stands for; no-op otherwise."""
    if isinstance(msg, ErrorReply):
        raise errors.from_code(msg.code, msg.message, dict(msg.details))

