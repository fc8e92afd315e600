"""The types the HTTP API speaks, built from the wire protocol's own Structs.

Records (``NodeInfo``, ``FunctionSpec``, ``FunctionInfo``, ``ExecutionInfo``)
are the protocol's classes themselves. Replies that are tagged wire messages
(``StatsReply``, ``Event``) are re-exposed through :func:`view`: a plain
Struct generated from the message's own field list, minus the request
``id`` and the ``t`` tag, which mean nothing over HTTP. So when a field is
added to the protocol it appears in the REST API and its OpenAPI document
with no edit here.

A deploy's body is a :data:`DeploySpec`: FunctionSpec's own fields, its
``runtime`` also taking the aliases of :data:`spear.specs.RUNTIME_ALIASES`
(``python``), turned back into a FunctionSpec by :func:`spec_of`.

The rest are the few envelopes only HTTP needs (pages, invoke results,
errors) and the query-string Structs that validate parameters and, through
:mod:`spear.gateway.openapi`, document them.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

import msgspec
from msgspec import Meta, Struct

from .. import protocol as P
from ..specs import RUNTIME_ALIASES, canonical_runtime


def _fields(struct_type: type, drop: tuple[str, ...] = (), retype: dict | None = None) -> list:
    """``struct_type``'s fields for :func:`msgspec.defstruct`, minus ``drop``, some retyped."""
    fields = []
    for f in msgspec.structs.fields(struct_type):
        if f.name in drop:
            continue
        typ = (retype or {}).get(f.name, f.type)
        if f.default is not msgspec.NODEFAULT:
            fields.append((f.name, typ, f.default))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, typ, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, typ))
    return fields


def view(msg_type: type, name: str, *, drop: tuple[str, ...] = ("id",)) -> type:
    """A plain (untagged) Struct with ``msg_type``'s fields minus ``drop``."""
    fields = _fields(msg_type, drop)
    doc = (msg_type.__doc__ or "").strip().splitlines()[0] if msg_type.__doc__ else ""
    doc = re.sub(r"^[\w ]+ -> [\w ]+: ", "", doc)  # the wire direction means nothing here
    doc = doc[:1].upper() + doc[1:]
    return msgspec.defstruct(name, fields, kw_only=True, frozen=True, module=__name__,
                             namespace={"__doc__": f"{doc} (wire message {msg_type.__name__})"})


def to_view(view_type: type, msg) -> object:
    """Build a :func:`view` instance from the wire message it mirrors."""
    return view_type(**{f: getattr(msg, f) for f in view_type.__struct_fields__})


def _deploy_spec_type() -> type:
    """FunctionSpec's fields, its ``runtime`` also taking the aliases (``python``)."""
    runtimes = Literal[(*get_args(P.Runtime), *RUNTIME_ALIASES)]
    fields = _fields(P.FunctionSpec, retype={"runtime": runtimes})
    doc = ("A function to deploy: a FunctionSpec whose `runtime` may also be `python`, the "
           "`process` runtime serving `handler` (a Python `module:function`). A Python handler's "
           "`artifact` is its code as a zip bundle (files at the top: `main.py` for "
           "`main:handler`), `artifact_sha256` its SHA-256 (checked against the bytes); "
           "`requirements` are plain requirement lines (pin them: nodes install exactly these, "
           "wheels only) and `python` the `major.minor` to run on (\"\": the node's).")
    return msgspec.defstruct("DeploySpec", fields, kw_only=True, frozen=True, module=__name__,
                             namespace={"__doc__": doc})


#: POST /v1/functions: a FunctionSpec, with the runtime aliases
DeploySpec = _deploy_spec_type()


def spec_of(deploy: DeploySpec) -> P.FunctionSpec:
    """The FunctionSpec a :data:`DeploySpec` stands for (aliases replaced)."""
    fields = {f: getattr(deploy, f) for f in deploy.__struct_fields__}
    fields["runtime"] = canonical_runtime(deploy.runtime)
    return P.FunctionSpec(**fields)


#: GET /v1/stats: cluster totals and execution counts (wire ``StatsReply``)
Stats = view(P.StatsReply, "Stats")
#: one event of GET /v1/events (wire ``Event``); ``seq`` is also the SSE id
EventView = view(P.Event, "Event")


# ---------------------------------------------------------------- envelopes


class ErrorBody(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Every error answer: a stable wire code and a human message."""

    code: str
    message: str
    execution_id: str = ""


class Health(Struct, frozen=True, kw_only=True):
    """GET /healthz: is the gateway up, and can it reach the SMS?"""

    status: Literal["ok", "degraded"]
    sms: str
    sms_reachable: bool
    version: str


class ExecutionPage(Struct, frozen=True, kw_only=True):
    """One page of execution records, newest first, and how many matched.

    ``next_cursor``: pass it as ``cursor`` for the next page ("" on the last);
    pages read by cursor do not shift when new executions arrive.
    """

    executions: list[P.ExecutionInfo]
    total: int
    limit: int
    offset: int
    next_cursor: str = ""


class InvokeResult(Struct, frozen=True, kw_only=True):
    """An execution record with its output (base64 in JSON, binary in MessagePack).

    ``output_text`` repeats the output when it is valid UTF-8; ``logs`` holds
    the stderr this gateway saw stream by (empty unless logs were captured).
    """

    execution: P.ExecutionInfo
    output: bytes = b""
    output_text: str | None = None
    logs: str = ""


class AcceptedExecution(Struct, frozen=True, kw_only=True):
    """202 for an async invocation or a cancel request: the execution id."""

    execution_id: str


class ExecutionLogs(Struct, frozen=True, kw_only=True):
    """GET /v1/executions/{id}/logs: an execution's stderr as seen by this gateway.

    ``captured`` is false when this gateway did not stream the execution
    (an async invocation, or one made through another client): the SMS does
    not keep logs, so only invocations made here with ``mode=stream`` or
    ``logs=true`` have them.
    """

    execution_id: str
    function: str
    status: P.ExecStatus
    logs: str = ""
    captured: bool = False
    truncated: bool = False


class Sample(Struct, frozen=True, kw_only=True):
    """One point of the live figures (GET /v1/live), taken every few seconds.

    Rates come from the SMS's execution counters; latency and pool hit rate
    from the executions that finished since the previous sample (a bounded
    sample of them: the newest ``sample_size``).
    """

    ts: float
    invocations_per_s: float = 0.0
    failures_per_s: float = 0.0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    pool_hit_rate: float | None = None
    executions_active: int = 0
    nodes_ready: int = 0
    cores_total: float = 0.0
    cores_reserved: float = 0.0


class LiveHistory(Struct, frozen=True, kw_only=True):
    """The samples held by the gateway, oldest first."""

    interval: float
    samples: list[Sample]


class NodeSample(Struct, frozen=True, kw_only=True):
    """A node's usage as its heartbeats reported it when the gateway sampled the SMS."""

    ts: float
    state: str = ""
    cpu_percent: float = 0.0
    memory_used: int = 0
    memory_total: int = 0
    load1: float = 0.0
    running: int = 0
    warm: int = 0


class NodeHistory(Struct, frozen=True, kw_only=True):
    """GET /v1/nodes/{node_id}/history: one node's usage samples, oldest first (the
    gateway keeps ``[gateway] history`` seconds of them, one every ``sample_interval``)."""

    node_id: str
    interval: float
    samples: list[NodeSample]


class FunctionStats(Struct, frozen=True, kw_only=True):
    """GET /v1/functions/{name}/stats: the SMS's figures of the function's executions
    submitted in the last ``window`` seconds (whole and by slice), and its warm and busy
    instances on each ready node now (a node that did not answer is left out)."""

    name: str
    window: float
    total: P.StatSlice
    active: int
    slices: list[P.StatSlice]
    warm: dict[str, int] = {}
    busy: dict[str, int] = {}


class WhoAmI(Struct, frozen=True, kw_only=True):
    """GET /v1/whoami: the caller's role and the wire operations it may use (the
    admin page shows only what these allow; the server checks every call anyway).

    ``role`` is "" on an open gateway (no bearer tokens), where every operation
    is allowed. ``trace_url``: where an execution's trace is shown ("{trace_id}"
    to replace), "" when none is configured.
    """

    role: str
    operations: list[str]
    trace_url: str = ""


# ---------------------------------------------------------------- query strings

Seconds = Annotated[float, Meta(gt=0, le=86400)]
WaitSeconds = Annotated[float, Meta(ge=0, le=3600)]
NodeRef = Annotated[str, Meta(max_length=512,
                              description="node id, name or address (direct call, bypassing the SMS)")]


class NodesQuery(Struct, frozen=True, kw_only=True):
    state: P.NodeState | None = None


class NodeQuery(Struct, frozen=True, kw_only=True):
    """Direct-to-Spearlet option shared by several routes."""

    node: NodeRef = ""


class InvokeQuery(Struct, frozen=True, kw_only=True):
    mode: Literal["sync", "async", "stream"] = "sync"
    args: Annotated[list[int | float], Meta(max_length=1024,
                                              description="numeric arguments (wasm exports): "
                                                          "repeat the parameter or separate with commas")] = []
    timeout: Seconds | None = None
    trace_id: Annotated[P.TraceId, Meta(description="the execution's trace id (also the "
                                                     "X-Spear-Trace-Id header)")] = ""
    node: NodeRef = ""
    envelope: Annotated[bool, Meta(description="answer 200 with an InvokeResult whatever the "
                                               "outcome, instead of the raw output")] = False
    logs: Annotated[bool, Meta(description="capture the execution's stderr (sync mode; costs a "
                                           "stream on the wire)")] = False
    output_type: Annotated[str, Meta(max_length=128, description="Content-Type of the raw output "
                                                                 "(default: the request's)")] = ""


UnixTime = Annotated[float, Meta(ge=0, le=1e11)]


class ExecutionsQuery(Struct, frozen=True, kw_only=True):
    function: Annotated[str, Meta(max_length=128)] = ""
    status: P.ExecStatus | None = None
    node: Annotated[str, Meta(max_length=128, description="node id")] = ""
    limit: Annotated[int, Meta(ge=1, le=10000)] = 100
    offset: Annotated[int, Meta(ge=0, le=2**31)] = 0
    since: Annotated[UnixTime, Meta(description="submitted at or after (Unix seconds)")] = 0.0
    until: Annotated[UnixTime, Meta(description="submitted before (Unix seconds)")] = 0.0
    prefix: Annotated[str, Meta(pattern=r"^[0-9a-f\-]{0,36}$",
                                description="the execution id starts with this (hex)")] = ""
    cursor: Annotated[str, Meta(max_length=80, description="a page's `next_cursor`: the "
                                                           "page after it")] = ""


class StatsQuery(Struct, frozen=True, kw_only=True):
    window: Annotated[float, Meta(gt=0, le=30 * 86400,
                                  description="seconds back from now")] = 3600.0
    slices: Annotated[int, Meta(ge=1, le=360, description="equal slices of the window")] = 12


class ExecutionQuery(Struct, frozen=True, kw_only=True):
    wait: Annotated[WaitSeconds, Meta(description="seconds to wait for a terminal state")] = 0.0
    node: NodeRef = ""


class EventsQuery(Struct, frozen=True, kw_only=True):
    since: Annotated[int, Meta(ge=0, le=2**62,
                               description="resume after this seq (the Last-Event-ID header wins)")] = 0
    kind: Literal["node", "execution"] | None = None


class DeployQuery(Struct, frozen=True, kw_only=True):
    node: NodeRef = ""


ExecutionId = Annotated[str, Meta(
    min_length=1, max_length=128,
    description="an execution id, or a unique prefix of it (8 or more hex digits, dashes not "
                "counted); answers name the whole id")]
