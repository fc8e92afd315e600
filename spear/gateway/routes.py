"""The REST routes: one declaration per route, read by the dispatcher and by OpenAPI.

Each :class:`Route` names the wire message it stands for (``op``): the
bearer-token role check is ``spear.roles.allowed(role, op)``, the
same table the SMS applies to CURVE keys. Its query Struct validates the
query string and becomes the documented parameters; its body and response
types become the documented schemas. Handlers are thin: parse, call the
:class:`~spear.client.AsyncClient`, shape the answer.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import msgspec

from .. import errors, protocol as P, tracing
from ..ids import is_uuid7
from ..roles import ALLOWED
from . import models as M
from .live import LogTail
from .http import (SSE_KEEPALIVE, HTTPError, Request, Response, StreamResponse, data,
                   invalid, parse_multipart, sse, sse_json, STATUS_OF_CODE)

# ---------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Body:
    """A request body: a Struct in JSON/MessagePack, or raw bytes (``typ=None``)."""

    typ: type | None
    description: str = ""
    extra_media: tuple[str, ...] = ()  # more accepted media types (documented as binary)
    required: bool = True


@dataclass(frozen=True)
class Reply:
    """One documented answer: a Struct (negotiated), raw bytes, or an SSE stream.

    For SSE, ``typ`` may be a tuple: the event data is one of those types.
    """

    description: str
    typ: Any = None
    kind: str = "data"  # data | raw | sse | none
    headers: tuple[str, ...] = ()
    events: tuple[str, ...] = ()  # SSE event names
    links: dict[str, dict] = field(default_factory=dict)  # OpenAPI links to other operations


@dataclass
class Route:
    method: str
    path: str
    handler: Callable
    op: type | None
    summary: str
    tag: str
    query: type | None = None
    params: dict[str, Any] = field(default_factory=dict)
    body: Body | None = None
    replies: dict[int, Reply] = field(default_factory=dict)
    description: str = ""
    regex: re.Pattern | None = None

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


ROUTES: list[Route] = []

FunctionName = P.Name
NodeKey = msgspec.structs.fields(P.GetNode)[1].type  # what GetNode accepts: id or name


def route(method: str, path: str, *, op, summary: str, tag: str, query=None, params=None,
          body: Body | None = None, replies: dict[int, Reply], description: str = ""):
    """Declare a route; the decorated coroutine is ``handler(gw, req, query, **params)``."""
    def deco(fn):
        regex = None
        if "{" in path:
            regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$")
        ROUTES.append(Route(method, path, fn, op, summary, tag, query, dict(params or {}), body,
                            replies, description or (fn.__doc__ or "").strip(), regex))
        return fn
    return deco


STREAMS_FULL = ("this bearer token (or client, without tokens) has `max_subscriptions_per_key` "
                "streams open already")

RESULT_HEADERS = ("X-Spear-Execution-Id", "X-Spear-Status", "X-Spear-Node", "X-Spear-Cold",
                  "X-Spear-Attempts", "Server-Timing")

# ---------------------------------------------------------------- helpers


def result_headers(info: P.ExecutionInfo) -> list[tuple[str, str]]:
    """An execution's id, status, node and timings as response headers."""
    t = info.timings
    h = [("x-spear-execution-id", info.execution_id), ("x-spear-status", info.status),
         ("x-spear-node", info.node_id), ("x-spear-cold", "true" if info.cold else "false"),
         ("x-spear-attempts", str(info.attempts)),
         ("server-timing", f"queue;dur={t.queue * 1e3:.3f}, cold;dur={t.cold_start * 1e3:.3f}, "
                           f"run;dur={t.run * 1e3:.3f}, total;dur={t.total * 1e3:.3f}")]
    if info.trace_id:
        h.append(("x-spear-trace-id", info.trace_id))
    if info.error is not None:
        h.append(("x-spear-error-code", info.error.code))
    return h


_CODE_OF_STATUS = {"failed": "FUNCTION_ERROR", "timed_out": "DEADLINE_EXCEEDED",
                   "cancelled": "CANCELLED", "lost": "UNAVAILABLE"}


def failure_of(info: P.ExecutionInfo) -> HTTPError:
    """The HTTP error for an execution that ended without success."""
    code = info.error.code if info.error is not None else _CODE_OF_STATUS.get(info.status, "INTERNAL")
    message = info.error.message if info.error is not None else f"execution {info.status}"
    return HTTPError(STATUS_OF_CODE.get(code, 502), code, message, headers=result_headers(info),
                     execution_id=info.execution_id)


def envelope(res, logs: bytes = b"") -> M.InvokeResult:
    out = bytes(res.output)
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return M.InvokeResult(execution=res.info, output=out, output_text=text,
                          logs=logs.decode("utf-8", "replace"))


def output_type(req: Request, explicit: str = "") -> str:
    return explicit or req.headers.get("content-type") or "application/octet-stream"


def trace_id_of(req: Request, q: M.InvokeQuery) -> str:
    """The invocation's trace id (``trace_id=``, else the ``X-Spear-Trace-Id`` header).

    A trace id goes into response headers and log lines as it is, so one with
    CR/LF or spaces is refused here, with 400, before the function runs.
    """
    raw = q.trace_id or req.headers.get("x-spear-trace-id", "")
    try:
        return msgspec.convert(raw, P.TraceId)
    except msgspec.ValidationError:
        raise invalid(f"trace id {raw[:60]!r} is not valid: up to 128 of A-Z a-z 0-9 . _ : / + = -"
                      ) from None


_MEDIA = re.compile(r"^[\w.+-]+/[\w.+-]+(; ?[\w.+-]+=[\w.+\"-]+)*$")

# ---------------------------------------------------------------- health


@route("GET", "/healthz", op=None, summary="Liveness of the gateway and its SMS link", tag="health",
       replies={200: Reply("the gateway reaches the SMS", M.Health),
                503: Reply("the SMS does not answer", M.Health)})
async def health(gw, req: Request, q):
    """200 when the SMS answers a ping within a second, 503 otherwise (no auth needed)."""
    from .. import __version__

    try:
        await gw.client.ping(timeout=1.0)
        ok = True
    except errors.SpearError:
        ok = False
    body = M.Health(status="ok" if ok else "degraded", sms=gw.settings.sms, sms_reachable=ok,
                    version=__version__)
    return data(body, req, 200 if ok else 503)


# ---------------------------------------------------------------- nodes


@route("GET", "/v1/nodes", op=P.ListNodes, summary="List nodes", tag="nodes", query=M.NodesQuery,
       replies={200: Reply("the registered nodes with their current usage", list[P.NodeInfo])})
async def list_nodes(gw, req, q: M.NodesQuery):
    return data(await gw.client.nodes(q.state), req)


@route("GET", "/v1/nodes/{node_id}", op=P.GetNode, summary="Get one node", tag="nodes",
       params={"node_id": NodeKey},
       replies={200: Reply("the node", P.NodeInfo), 404: Reply("no such node", M.ErrorBody)})
async def get_node(gw, req, q, node_id: str):
    """By node id or name."""
    return data(await gw.client.node(node_id), req)


@route("GET", "/v1/nodes/{node_id}/history", op=P.GetNode, summary="A node's usage over time",
       tag="nodes", params={"node_id": NodeKey},
       replies={200: Reply("its usage as sampled by this gateway, oldest first", M.NodeHistory),
                404: Reply("no such node", M.ErrorBody)})
async def get_node_history(gw, req, q, node_id: str):
    """By node id or name; samples come from the heartbeats the SMS holds, read every
    `sample_interval` seconds and kept for `history` seconds."""
    info = await gw.client.node(node_id)
    return data(gw.monitor.node_history(info.node_id), req)


@route("POST", "/v1/nodes/{node_id}/drain", op=P.DrainNode, summary="Drain a node", tag="nodes",
       params={"node_id": NodeKey},
       replies={200: Reply("the node, now draining (no new work goes there)", P.NodeInfo),
                404: Reply("no such node", M.ErrorBody)})
async def drain_node(gw, req, q, node_id: str):
    """Work running there finishes; queued and new work goes to other nodes. The node
    stays draining across its reconnects, until the drain is undone."""
    return data(await gw.client.drain(node_id), req)


@route("DELETE", "/v1/nodes/{node_id}/drain", op=P.DrainNode, summary="Undo a node's drain",
       tag="nodes", params={"node_id": NodeKey},
       replies={200: Reply("the node, ready again if it is alive", P.NodeInfo),
                404: Reply("no such node", M.ErrorBody)})
async def undrain_node(gw, req, q, node_id: str):
    return data(await gw.client.drain(node_id, False), req)


# ---------------------------------------------------------------- functions


@route("GET", "/v1/functions", op=P.ListFunctions, summary="List functions", tag="functions",
       query=M.NodeQuery,
       replies={200: Reply("the functions registered with the SMS (or deployed on `node`, with "
                           "its pool figures)", list[P.FunctionInfo])})
async def list_functions(gw, req, q: M.NodeQuery):
    return data(await gw.client.functions(node=await gw.node_address(q.node)), req)


DEPLOY_DOC = """Four ways to send the function:

* `application/json`: a DeploySpec, the artifact base64 in `artifact`;
* `application/msgpack`: a DeploySpec, the artifact as binary;
* `multipart/form-data`: a part `spec` (JSON DeploySpec, or MessagePack if that part says
  so) and an optional file part `artifact`;
* any other type (e.g. `application/octet-stream`, `application/wasm`, `application/zip`):
  the body is the artifact and the header `X-Spear-Spec` holds the DeploySpec as JSON.

A DeploySpec is a FunctionSpec whose `runtime` may also be `python`: a Python handler
(`module:function` in `handler`), registered as runtime `process`. Its code travels as a
zip bundle in `artifact` (as `spear deploy ./dir --runtime python` packs it), with
`requirements` (exact pins: the gateway does not resolve them) and `python` (`major.minor`).

Answers 201 with the FunctionInfo and `Location: /v1/functions/{name}`."""


@route("POST", "/v1/functions", op=P.DeployFunction, summary="Deploy (or update) a function",
       tag="functions", query=M.DeployQuery, description=DEPLOY_DOC,
       body=Body(M.DeploySpec, "the function (see the operation's description for uploads)",
                 extra_media=("multipart/form-data", "application/octet-stream")),
       replies={201: Reply("deployed", P.FunctionInfo, headers=("Location",)),
                400: Reply("invalid spec", M.ErrorBody), 413: Reply("body too large", M.ErrorBody)})
async def deploy_function(gw, req: Request, q: M.DeployQuery):
    ctype = req.content_type
    body = req.body
    if ctype == "multipart/form-data":
        parts = parse_multipart(body, req.headers.get("content-type", ""))
        if "spec" not in parts:
            raise invalid("multipart deploy needs a part named 'spec' (a JSON FunctionSpec)")
        spec_part = parts["spec"]
        spec = _decode_spec(spec_part.data, msgpack=spec_part.content_type.endswith("msgpack"))
        if "artifact" in parts:
            spec = msgspec.structs.replace(spec, artifact=parts["artifact"].data)
    elif ctype in ("", "application/json") or ctype.endswith("+json") or req.sent_msgpack:
        spec = req.decode(body, M.DeploySpec)
    else:
        header = req.headers.get("x-spear-spec")
        if not header:
            raise invalid(f"with Content-Type {ctype} the body is the artifact: put the FunctionSpec as JSON in "
                          "the X-Spear-Spec header (or send JSON or multipart/form-data)")
        spec = _decode_spec(header.encode("latin-1"), msgpack=False)
        spec = msgspec.structs.replace(spec, artifact=body)
    if spec.runtime == "python" and not spec.handler:
        raise invalid("runtime python needs a handler: the Python module:function to call")
    info = await gw.client.deploy(M.spec_of(spec), node=await gw.node_address(q.node))
    return data(info, req, 201, headers=[("location", f"/v1/functions/{info.name}")])


def _decode_spec(raw: bytes, *, msgpack: bool) -> M.DeploySpec:
    try:
        if msgpack:
            return msgspec.msgpack.decode(raw, type=M.DeploySpec)
        return msgspec.json.decode(raw, type=M.DeploySpec)
    except msgspec.ValidationError as exc:
        raise invalid(f"invalid spec: {exc}") from None
    except msgspec.DecodeError as exc:
        raise invalid(f"malformed spec: {exc}") from None


@route("GET", "/v1/functions/{name}", op=P.GetFunction, summary="Get a function's spec",
       tag="functions", params={"name": FunctionName},
       replies={200: Reply("the spec as registered (artifact omitted)", P.FunctionSpec),
                404: Reply("no such function", M.ErrorBody)})
async def get_function(gw, req, q, name: str):
    return data(gw.visible_spec(req, await gw.client.function(name)), req)


@route("DELETE", "/v1/functions/{name}", op=P.RemoveFunction, summary="Remove a function",
       tag="functions", params={"name": FunctionName}, query=M.NodeQuery,
       replies={204: Reply("removed", kind="none"), 404: Reply("no such function", M.ErrorBody)})
async def remove_function(gw, req, q: M.NodeQuery, name: str):
    await gw.client.remove(name, node=await gw.node_address(q.node))
    return Response(b"", 204)


@route("GET", "/v1/functions/{name}/stats", op=P.Stats, summary="A function's statistics",
       tag="functions", params={"name": FunctionName}, query=M.StatsQuery,
       replies={200: Reply("calls, errors, cold starts and durations over the window, and "
                           "its instances now", M.FunctionStats)})
async def get_function_stats(gw, req, q: M.StatsQuery, name: str):
    """The figures count the executions submitted in the last `window` seconds, as the
    SMS holds them (its retention bounds how far back they go); warm and busy instances
    are asked of every ready node."""
    figures = await gw.client.function_stats(q.window, slices=q.slices, function=name)
    stat = figures[0] if figures else P.FunctionStat(name=name)
    warm, busy = await _instances(gw, name)
    return data(M.FunctionStats(name=name, window=q.window, total=stat.total, active=stat.active,
                                slices=stat.slices, warm=warm, busy=busy), req)


async def _instances(gw, name: str) -> tuple[dict[str, int], dict[str, int]]:
    """Warm and busy instances of ``name`` per ready node (a node that does not answer
    within a second is left out: one stuck node must not hold the page)."""
    nodes = [n for n in await gw.client.nodes("ready") if n.address]

    async def one(n):
        fns = await gw.client.functions(node=n.address, timeout=1.0)
        return n.node_id, next((f for f in fns if f.name == name), None)

    warm: dict[str, int] = {}
    busy: dict[str, int] = {}
    for got in await asyncio.gather(*(one(n) for n in nodes), return_exceptions=True):
        if isinstance(got, BaseException):
            continue
        node_id, f = got
        if f is not None:
            warm[node_id], busy[node_id] = f.warm, f.busy
    return warm, busy


# ---------------------------------------------------------------- invoke


INVOKE_DOC = """The body is the function's input, as raw bytes of any type.

* `mode=sync` (default): waits for the result. The answer's body is the raw output; its
  `Content-Type` is `output_type` if given, else the request's `Content-Type`. Headers carry
  the execution id, status, node, attempts and `Server-Timing` (queue, cold start, run, total
  in ms). An execution that does not succeed answers with the status of its error code
  (`FUNCTION_ERROR` 502, `DEADLINE_EXCEEDED` 504, `CANCELLED` 409, `RESOURCE_EXHAUSTED` 429,
  `UNAVAILABLE` 503) and an error body carrying `execution_id`. With `envelope=true` every
  finished execution answers 200 with an `InvokeResult` (status inside), JSON or MessagePack.
* `mode=async`: 202 with the execution id and `Location: /v1/executions/{id}`.
* `mode=stream`: Server-Sent Events: `log` events (stderr text, as it is written), then one
  `result` event (an `InvokeResult` as JSON), or an `error` event."""


@route("POST", "/v1/functions/{name}/invoke", op=P.Invoke, summary="Invoke a function",
       tag="invoke", params={"name": FunctionName}, query=M.InvokeQuery, description=INVOKE_DOC,
       body=Body(None, "the function's input (any media type)", required=False),
       replies={200: Reply("sync: the raw output (or an InvokeResult with envelope=true); "
                           "stream: Server-Sent Events", M.InvokeResult, kind="raw",
                           headers=RESULT_HEADERS),
                202: Reply("async: accepted", M.AcceptedExecution, headers=("Location",),
                           links={op: {"operationId": op,
                                       "parameters": {"execution_id": "$response.body#/execution_id"}}
                                  for op in ("get_execution", "get_execution_output",
                                             "cancel_execution", "get_execution_logs")}),
                404: Reply("no such function", M.ErrorBody),
                409: Reply("the execution was cancelled", M.ErrorBody),
                413: Reply("input too large", M.ErrorBody),
                502: Reply("the function failed", M.ErrorBody),
                504: Reply("the execution timed out", M.ErrorBody)})
async def invoke(gw, req: Request, q: M.InvokeQuery, name: str):
    if q.output_type and not _MEDIA.match(q.output_type):
        raise invalid(f"output_type {q.output_type[:60]!r} is not a media type")
    trace_id = trace_id_of(req, q)  # before anything is submitted
    node = await gw.node_address(q.node)
    kw = dict(args=q.args, node=node, timeout=q.timeout, trace_id=trace_id)
    tp, ts = req.headers.get("traceparent", ""), req.headers.get("tracestate", "")
    if not gw.tracer:
        if tp:  # passed on as it came (a malformed one is dropped: a new trace)
            kw["traceparent"], kw["tracestate"] = tracing.incoming(tp, ts)
        return await _invoke(gw, req, q, name, kw)
    _, own, parent, ts = tracing.begin(gw.tracer, tp, ts, "", uuid.uuid4().hex)
    kw["traceparent"], kw["tracestate"] = own, ts
    start, status, eid, error = time.time(), 200, "", ""
    try:
        resp = await _invoke(gw, req, q, name, kw)
        status = getattr(resp, "status", 200)
        eid = next((v for k, v in getattr(resp, "headers", ()) if k == "x-spear-execution-id"), "")
        return resp
    except HTTPError as exc:
        status = exc.status
        error = str(status) if status >= 500 else ""
        raise
    except BaseException as exc:
        error = getattr(exc, "code", type(exc).__name__)
        raise
    finally:
        attrs = {"http.request.method": "POST", "url.path": req.path, "spear.function": name,
                 "http.response.status_code": status}
        if eid:
            attrs["spear.execution_id"] = eid
        up = f"{own[:36]}{parent}{own[52:]}" if parent else own
        gw.tracer.span("spear.gateway", up, own[36:52], start, None, attrs, root=not parent,
                       kind="server", tracestate=ts, error=error)


async def _invoke(gw, req: Request, q: M.InvokeQuery, name: str, kw: dict):
    """:func:`invoke` once its arguments (``kw``) are resolved."""
    if q.mode == "async":
        eid = await gw.client.submit(name, req.body, **kw)
        return data(M.AcceptedExecution(execution_id=eid), req, 202,
                    headers=[("location", f"/v1/executions/{eid}")])
    if q.mode == "stream":
        if kw["node"] is None:
            await gw.client.function(name)  # 404 now, before the stream has begun
        return StreamResponse(_invoke_stream(gw, name, req.body, kw))
    chunks: list[bytes] = LogTail(gw.logs.max_bytes)
    if q.logs:
        res = None
        async for item in gw.invoker.stream(name, req.body, **kw):
            if isinstance(item, bytes):
                chunks.append(item)
            else:
                res = item
        gw.logs.put(res.execution_id, chunks)
    else:
        res = await gw.invoker.invoke(name, req.body, **kw)
    if q.envelope:
        return data(envelope(res, b"".join(chunks)), req, headers=result_headers(res.info))
    if not res.ok:
        raise failure_of(res.info)
    return Response(res.output, 200, content_type=output_type(req, q.output_type),
                    headers=result_headers(res.info))


async def _invoke_stream(gw, name: str, data_in: bytes, kw: dict):
    chunks: list[bytes] = LogTail(gw.logs.max_bytes)
    try:
        async for item in gw.invoker.stream(name, data_in, **kw):
            if isinstance(item, bytes):
                chunks.append(item)
                yield sse("log", item)
            else:
                logs = b"".join(chunks)
                gw.logs.put(item.execution_id, chunks)
                yield sse_json("result", envelope(item, logs), id=item.execution_id)
    except errors.SpearError as exc:
        yield sse_json("error", M.ErrorBody(code=exc.code, message=exc.message))


# ---------------------------------------------------------------- executions


@route("GET", "/v1/executions", op=P.ListExecutions, summary="List executions", tag="executions",
       query=M.ExecutionsQuery,
       replies={200: Reply("a page of records, newest first", M.ExecutionPage)})
async def list_executions(gw, req, q: M.ExecutionsQuery):
    """Filtered by function, status, node, submission time and id prefix; page with
    `offset`, or with `cursor` (each page's `next_cursor`) for pages that hold still
    while new executions arrive."""
    page = await gw.client.execution_page(
        function=q.function, status=q.status, node_id=q.node, since=q.since, until=q.until,
        prefix=q.prefix, cursor=q.cursor, limit=q.limit, offset=q.offset)
    return data(M.ExecutionPage(executions=page.executions, total=page.total, limit=q.limit,
                                offset=q.offset, next_cursor=page.next_cursor), req)


@route("GET", "/v1/executions/{execution_id}", op=P.GetExecution, summary="Get an execution",
       tag="executions", params={"execution_id": M.ExecutionId}, query=M.ExecutionQuery,
       replies={200: Reply("its record and output (and logs, if this gateway captured them)",
                           M.InvokeResult, headers=RESULT_HEADERS),
                404: Reply("no such execution", M.ErrorBody)})
async def get_execution(gw, req, q: M.ExecutionQuery, execution_id: str):
    """`wait=S` holds the answer until the execution finishes or S seconds pass."""
    res = await gw.client.execution(execution_id, wait=q.wait, node=await gw.node_address(q.node))
    logs = gw.logs.get(res.info.execution_id)  # the whole id, if a prefix was given
    return data(envelope(res, logs[0] if logs else b""), req, headers=result_headers(res.info))


@route("GET", "/v1/executions/{execution_id}/output", op=P.GetExecution,
       summary="An execution's raw output", tag="executions",
       params={"execution_id": M.ExecutionId}, query=M.ExecutionQuery,
       replies={200: Reply("the output bytes (application/octet-stream)", kind="raw",
                           headers=RESULT_HEADERS),
                404: Reply("no such execution", M.ErrorBody)})
async def get_execution_output(gw, req, q: M.ExecutionQuery, execution_id: str):
    res = await gw.client.execution(execution_id, wait=q.wait, node=await gw.node_address(q.node))
    return Response(res.output, 200, content_type="application/octet-stream",
                    headers=result_headers(res.info))


@route("POST", "/v1/executions/{execution_id}/cancel", op=P.CancelExecution,
       summary="Cancel an execution", tag="executions", params={"execution_id": M.ExecutionId},
       query=M.NodeQuery,
       replies={202: Reply("cancel requested (a finished execution stays as it was)",
                           M.AcceptedExecution),
                404: Reply("no such execution", M.ErrorBody)})
async def cancel_execution(gw, req, q: M.NodeQuery, execution_id: str):
    """The id may be a unique prefix; the answer names the whole id."""
    node = await gw.node_address(q.node)
    if not is_uuid7(execution_id):  # the daemon resolves the prefix; learn the whole id
        execution_id = (await gw.client.execution(execution_id, node=node)).info.execution_id
    await gw.client.cancel(execution_id, node=node)
    return data(M.AcceptedExecution(execution_id=execution_id), req, 202)


@route("GET", "/v1/executions/{execution_id}/logs", op=P.GetExecution,
       summary="An execution's logs", tag="executions", params={"execution_id": M.ExecutionId},
       replies={200: Reply("the stderr this gateway captured (text/plain when asked)",
                           M.ExecutionLogs),
                404: Reply("no such execution", M.ErrorBody)})
async def get_execution_logs(gw, req: Request, q, execution_id: str):
    """Logs exist for executions streamed through this gateway (`mode=stream` or `logs=true`)."""
    res = await gw.client.execution(execution_id)
    execution_id = res.info.execution_id  # the whole id, if a prefix was given
    got = gw.logs.get(execution_id)
    raw, truncated = got if got else (b"", False)
    if "text/plain" in req.headers.get("accept", ""):
        return Response(raw, 200, content_type="text/plain; charset=utf-8")
    return data(M.ExecutionLogs(execution_id=execution_id, function=res.info.function,
                                status=res.info.status, logs=raw.decode("utf-8", "replace"),
                                captured=got is not None, truncated=truncated), req)


# ---------------------------------------------------------------- cluster


@route("GET", "/v1/stats", op=P.Stats, summary="Cluster totals and execution counts",
       tag="cluster", replies={200: Reply("the figures", M.Stats)})
async def stats(gw, req, q):
    return data(M.to_view(M.Stats, await gw.client.stats()), req)


@route("GET", "/v1/stats/functions", op=P.Stats, summary="Every function's statistics",
       tag="cluster", query=M.StatsQuery,
       replies={200: Reply("per function (by name): calls, errors, cold starts and durations "
                           "of the executions submitted in the window", list[P.FunctionStat])})
async def function_stats(gw, req, q: M.StatsQuery):
    return data(await gw.client.function_stats(q.window, slices=q.slices), req)


@route("GET", "/v1/whoami", op=P.Ping, summary="The caller's role and what it may do",
       tag="cluster", replies={200: Reply("the role and its operations", M.WhoAmI)})
async def whoami(gw, req, q):
    """What the admin page asks first, to show only the actions the role may take."""
    role = req.role if gw.tokens else ""
    ops = ALLOWED.get(role, frozenset()) if gw.tokens else ALLOWED["admin"]
    return data(M.WhoAmI(role=role, operations=sorted(t.__name__ for t in ops),
                         trace_url=gw.settings.gateway.trace_url), req)


@route("GET", "/v1/events", op=P.Subscribe, summary="Node and execution events (SSE)",
       tag="cluster", query=M.EventsQuery,
       replies={200: Reply("a never-ending stream of `node` and `execution` events; each "
                           "event's id is its seq", (M.EventView, M.ErrorBody), kind="sse",
                           events=("node", "execution", "error")),
                429: Reply(STREAMS_FULL, M.ErrorBody)})
async def events(gw, req: Request, q: M.EventsQuery):
    """Resumable: reconnect with `Last-Event-ID` (or `since`) to get what was missed while
    the SMS still holds it (its last 10,000 events)."""
    since = q.since
    last = req.headers.get("last-event-id", "").strip()
    if last:
        if not last.isdigit():
            raise invalid(f"Last-Event-ID {last[:40]!r} is not a sequence number")
        since = int(last)
    return StreamResponse(_event_stream(gw, since, q.kind), release=gw.subscription(req))


async def _event_stream(gw, since: int, kind: str | None):
    yield b"retry: 1000\n\n"
    stream = gw.client.events(since)
    nxt = None
    try:
        while True:
            nxt = nxt or asyncio.ensure_future(stream.__anext__())
            done, _ = await asyncio.wait({nxt}, timeout=15.0)
            if not done:
                yield SSE_KEEPALIVE
                continue
            ev, nxt = nxt.result(), None
            if kind is None or ev.kind == kind:
                yield sse_json(ev.kind, M.to_view(M.EventView, ev), id=ev.seq)
    except errors.SpearError as exc:  # e.g. fell behind: the client resumes from its Last-Event-ID
        yield sse_json("error", M.ErrorBody(code=exc.code, message=exc.message))
    finally:
        if nxt is not None:
            nxt.cancel()
        await stream.aclose()


@route("GET", "/v1/live", op=P.Stats, summary="Live figures: recent samples", tag="cluster",
       replies={200: Reply("throughput, latency and pool hit rate, oldest first", M.LiveHistory)})
async def live(gw, req, q):
    return data(gw.monitor.history(), req)


@route("GET", "/v1/live/stream", op=P.Stats, summary="Live figures as they are sampled (SSE)",
       tag="cluster",
       replies={200: Reply("a `history` event (LiveHistory), then one `sample` event per "
                           "interval", (M.Sample, M.LiveHistory), kind="sse",
                           events=("history", "sample")),
                429: Reply(STREAMS_FULL, M.ErrorBody)})
async def live_stream(gw, req, q):
    return StreamResponse(_live_stream(gw), release=gw.subscription(req))


async def _live_stream(gw):
    yield sse_json("history", gw.monitor.history())
    async for sample in gw.monitor.listen():
        yield sse_json("sample", sample)

