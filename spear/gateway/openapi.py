"""The OpenAPI 3.1 document, generated from the route table and the msgspec types.

Nothing here is written by hand per route: every schema comes from
``msgspec.json.schema_components`` over the very Structs the wire protocol
and the handlers decode with (OpenAPI 3.1 schemas are JSON Schema 2020-12,
which is what msgspec emits). The only translation is regex dialect: the
protocol's patterns end in Python's ``\\Z``, which ECMA-262 (the dialect
OpenAPI names) spells ``$``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .. import __version__, protocol as P
from . import models as M
from .http import JSON, MSGPACK, SSE
from .routes import ROUTES, Route

REF = "#/components/schemas/{name}"
BINARY = {"type": "string", "format": "binary"}

TAGS = [
    {"name": "invoke", "description": "Run functions: sync, async or streamed."},
    {"name": "functions", "description": "Deploy, inspect and remove functions."},
    {"name": "executions", "description": "Execution records, outputs, logs, cancellation."},
    {"name": "nodes", "description": "Compute nodes, their usage over time, drain."},
    {"name": "cluster", "description": "Totals, statistics, live figures, the event stream, "
                                       "the caller's role."},
    {"name": "health", "description": "Liveness."},
]

DESCRIPTION = """REST interface of a Spear cluster: an ordinary client of the SMS.

JSON by default; MessagePack when the request's `Content-Type` or `Accept` is
`application/msgpack`. Function input and output are raw bytes. Errors are
`{"code", "message"}` with the stable wire codes (see the `ErrorBody` schema)."""


def _ecma(node: Any) -> Any:
    """Rewrite Python-only regex syntax in every ``pattern`` of a schema tree."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "pattern" and isinstance(v, str):
                v = v[:-2] + "$" if v.endswith("\\Z") else v
            out[k] = _ecma(v)
        return out
    if isinstance(node, list):
        return [_ecma(v) for v in node]
    return node


def _not_null(schema: dict) -> dict:
    """A query parameter is absent, never null: drop ``null`` from its schema.

    Also name the type of a string enum (msgspec leaves it implied), which
    form-building UIs such as Swagger's need to offer a choice.
    """
    enum = schema.get("enum")
    if enum and "type" not in schema and all(isinstance(v, str) for v in enum):
        schema = {"type": "string", **schema}
    alts = schema.get("anyOf")
    if not alts:
        return schema
    rest = [a for a in alts if a != {"type": "null"}]
    out = {k: v for k, v in schema.items() if k != "anyOf"}
    if out.get("default", 0) is None:
        del out["default"]
    if len(rest) == 1:
        out.update(_not_null(rest[0]))
    else:
        out["anyOf"] = rest
    return out


def _negotiated(schema: dict) -> dict:
    return {JSON: {"schema": schema}, MSGPACK: {"schema": schema}}


def build(*, bearer: bool = False, routes: list[Route] | None = None) -> dict:
    """The whole document; ``bearer`` adds the bearer-token scheme to /v1 routes."""
    routes = ROUTES if routes is None else routes
    wanted: list[Any] = [M.ErrorBody]
    for r in routes:
        if r.query is not None:
            wanted.append(r.query)
        wanted.extend(r.params.values())
        if r.body is not None and r.body.typ is not None:
            wanted.append(r.body.typ)
        for rep in r.replies.values():
            if isinstance(rep.typ, tuple):
                wanted.extend(rep.typ)
            elif rep.typ is not None:
                wanted.append(rep.typ)
    schemas, components = msgspec.json.schema_components(wanted, ref_template=REF)
    schema_of = {id(t): s for t, s in zip(wanted, schemas)}
    queries = {r.query.__name__ for r in routes if r.query is not None}
    error = schema_of[id(M.ErrorBody)]

    paths: dict[str, dict] = {}
    for r in routes:
        op: dict[str, Any] = {"operationId": r.operation_id, "summary": r.summary, "tags": [r.tag]}
        if r.description:
            op["description"] = r.description
        params = [{"name": n, "in": "path", "required": True, "schema": schema_of[id(t)]}
                  for n, t in r.params.items()]
        if r.query is not None:
            qs = components[r.query.__name__]
            required = set(qs.get("required", ()))
            for n, s in qs["properties"].items():
                s = _not_null(s)
                p = {"name": n, "in": "query", "required": n in required, "schema": s}
                if "description" in s:
                    p["description"] = s["description"]
                if s.get("type") == "array":
                    p["style"], p["explode"] = "form", True
                params.append(p)
        if r.path == "/v1/events":
            params.append({"name": "Last-Event-ID", "in": "header", "required": False,
                           "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                           "description": "resume after this seq (set by EventSource on reconnect)"})
        if r.path == "/v1/functions/{name}/invoke":
            params.append({"name": "X-Spear-Trace-Id", "in": "header", "required": False,
                           "schema": msgspec.json.schema(P.TraceId),
                           "description": "the execution's trace id, if `trace_id` is not given"})
            params += [{"name": n, "in": "header", "required": False, "schema": {"type": "string"},
                        "description": d} for n, d in (
                ("traceparent", "W3C trace context the execution joins (a malformed one "
                                "starts a new trace); the function sees it as TRACEPARENT"),
                ("tracestate", "W3C vendor trace state, passed on with `traceparent`"))]
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = _body(r, schema_of)
        op["responses"] = _responses(r, schema_of, error)
        if bearer and r.op is not None:
            op["security"] = [{"bearer": []}]
            op["responses"].setdefault("401", {"description": "missing or unknown bearer token",
                                               "content": _negotiated(error)})
            op["responses"].setdefault("403", {"description": "the token's role may not do this",
                                               "content": _negotiated(error)})
        paths.setdefault(r.path, {})[r.method.lower()] = op

    for name in queries:
        components.pop(name, None)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Spear gateway", "version": __version__, "description": DESCRIPTION},
        "tags": TAGS,
        "paths": paths,
        "components": {"schemas": components},
    }
    if bearer:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "a token from [security] tokens; its role sets what it may do"}}
    return _ecma(doc)


def _body(r: Route, schema_of: dict) -> dict:
    b = r.body
    content: dict[str, Any] = {}
    if b.typ is None:
        content["application/octet-stream"] = {"schema": BINARY}
    else:
        s = schema_of[id(b.typ)]
        content.update(_negotiated(s))
        for media in b.extra_media:
            if media == "multipart/form-data":
                content[media] = {
                    "schema": {"type": "object", "required": ["spec"],
                               "properties": {"spec": s, "artifact": BINARY}},
                    "encoding": {"spec": {"contentType": f"{JSON}, {MSGPACK}"}},
                }
            else:
                content[media] = {"schema": BINARY}
    return {"required": b.required, "description": b.description, "content": content}


def _sse_item(events: tuple[str, ...], data: dict | None) -> dict:
    """One Server-Sent Event (OpenAPI 3.2's ``itemSchema``): its name, id and JSON data."""
    data_schema: dict[str, Any] = {"type": "string"}
    if data is not None:
        data_schema.update(contentMediaType=JSON, contentSchema=data)
    item: dict[str, Any] = {"type": "object", "required": ["data"],
                            "properties": {"data": data_schema, "id": {"type": "string"},
                                           "retry": {"type": "integer", "minimum": 0}}}
    if events:
        item["properties"]["event"] = {"enum": list(events)}
    return item


def _responses(r: Route, schema_of: dict, error: dict) -> dict:
    out: dict[str, Any] = {}
    for status, rep in r.replies.items():
        entry: dict[str, Any] = {"description": rep.description}
        if rep.kind == "data":
            entry["content"] = _negotiated(schema_of[id(rep.typ)])
        elif rep.kind == "raw":
            content = {"application/octet-stream": {"schema": BINARY}, "*/*": {"schema": BINARY}}
            if rep.typ is not None:
                content.update(_negotiated(schema_of[id(rep.typ)]))
                content[SSE] = {"itemSchema": _sse_item(("log", "result", "error"), None)}
            entry["content"] = content
        elif rep.kind == "sse":
            types = rep.typ if isinstance(rep.typ, tuple) else (rep.typ,)
            data = [schema_of[id(t)] for t in types]
            entry["content"] = {SSE: {"itemSchema": _sse_item(
                rep.events, data[0] if len(data) == 1 else {"anyOf": data})}}
        if rep.links:
            entry["links"] = rep.links
        if rep.headers:
            entry["headers"] = {h: {"schema": {"type": "string"}} for h in rep.headers}
        out[str(status)] = entry
    statuses = set(r.replies)
    if r.query is not None or r.params or r.body is not None:
        statuses.add(400)
        out.setdefault("400", {"description": "invalid argument", "content": _negotiated(error)})
    if r.body is not None:
        out.setdefault("413", {"description": "body too large", "content": _negotiated(error)})
        out.setdefault("415", {"description": "unsupported media type", "content": _negotiated(error)})
    out["default"] = {"description": "any other error: the stable wire code and a message "
                                     "(429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, "
                                     "500 INTERNAL)", "content": _negotiated(error)}
    return out
