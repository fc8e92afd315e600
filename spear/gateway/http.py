"""A small ASGI toolkit: requests, responses, Server-Sent Events, negotiation.

Why not a framework: the gateway needs a dozen routes, raw-byte bodies with
their content type kept, SSE, two codecs, and an OpenAPI document built from
msgspec's own JSON Schema of the wire types. Frameworks bring their own
schema generators and validation layers in front of msgspec; doing the
little that is needed here directly keeps one source of truth for types,
one for errors, and no dependency beyond an ASGI server (uvicorn).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, AsyncIterator, Iterable
from urllib.parse import parse_qsl

import msgspec

from .. import errors

#: wire error code -> HTTP status (see docs/gateway.md)
STATUS_OF_CODE: dict[str, int] = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "CANCELLED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "FUNCTION_ERROR": 502,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}

MSGPACK = "application/msgpack"
_MSGPACK_ALIASES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})
JSON = "application/json"
SSE = "text/event-stream"

_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()


class HTTPError(Exception):
    """An error answer: HTTP status plus the stable wire code and a message."""

    def __init__(self, status: int, code: str, message: str, *,
                 headers: Iterable[tuple[str, str]] = (), execution_id: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = list(headers)
        self.execution_id = execution_id

    @classmethod
    def of(cls, exc: errors.SpearError) -> "HTTPError":
        """The HTTP form of a Spear error (its code picks the status)."""
        return cls(STATUS_OF_CODE.get(exc.code, 500), exc.code, exc.message)


def invalid(message: str) -> HTTPError:
    return HTTPError(400, "INVALID_ARGUMENT", message)


class ClientGone(Exception):
    """The client disconnected before its request was read."""


# ---------------------------------------------------------------- requests


class Request:
    """One HTTP request: parsed query and headers; the body is read on demand."""

    __slots__ = ("scope", "receive", "method", "path", "query", "headers", "body", "role")

    def __init__(self, scope: dict, receive) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query: dict[str, list[str]] = {}
        for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                              keep_blank_values=True):
            self.query.setdefault(k, []).append(v)
        self.headers: dict[str, str] = {k.decode("latin-1").lower(): v.decode("latin-1")
                                        for k, v in scope.get("headers", ())}
        self.body: bytes = b""
        self.role: str = ""

    @property
    def content_type(self) -> str:
        """The media type of the body, lower case, without parameters ("" if none)."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    @property
    def wants_msgpack(self) -> bool:
        """MessagePack out when the client accepts it, or sent it and accepts anything."""
        accept = self.headers.get("accept", "")
        if accept:
            concrete = False
            for t in accept.split(","):
                t = t.split(";", 1)[0].strip().lower()
                if t in _MSGPACK_ALIASES:
                    return True
                if t == JSON or t.endswith("+json"):
                    return False  # listed first: the client's preference
                concrete = concrete or t not in ("*/*", "application/*", "")
            if concrete:
                return False
        return self.content_type in _MSGPACK_ALIASES

    @property
    def sent_msgpack(self) -> bool:
        return self.content_type in _MSGPACK_ALIASES

    async def read_body(self, limit: int, timeout: float = 120.0) -> bytes:
        """Read the whole body; 413 once it is known to exceed ``limit`` bytes, 408
        when it has not all arrived ``timeout`` seconds after the headers."""
        declared = self.headers.get("content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                raise invalid(f"bad Content-Length {declared[:40]!r}") from None
            if n > limit:
                raise too_large(n, limit)
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                msg = await _receive_by(self.receive, deadline)
            except asyncio.TimeoutError:
                raise HTTPError(408, "DEADLINE_EXCEEDED",
                                f"the request body did not arrive within {timeout:g} s "
                                "([gateway] body_timeout)", headers=[("connection", "close")]) from None
            if msg["type"] == "http.disconnect":
                raise ClientGone
            chunk = msg.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise too_large(size, limit)
                chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        self.body = b"".join(chunks)
        return self.body

    def decode(self, body: bytes, typ: type) -> Any:
        """Decode a JSON or MessagePack body into ``typ`` (strictly)."""
        ctype = self.content_type
        try:
            if ctype in _MSGPACK_ALIASES:
                return msgspec.msgpack.decode(body, type=typ)
            if ctype in ("", JSON) or ctype.endswith("+json"):
                return msgspec.json.decode(body, type=typ)
        except msgspec.ValidationError as exc:
            raise invalid(f"invalid body: {_field_message(exc, 'body')}") from None
        except msgspec.DecodeError as exc:
            raise invalid(f"malformed {'MessagePack' if ctype in _MSGPACK_ALIASES else 'JSON'} "
                          f"body: {exc}") from None
        raise HTTPError(415, "INVALID_ARGUMENT",
                        f"unsupported Content-Type {ctype!r}: send {JSON} or {MSGPACK}")


async def _receive_by(receive, deadline: float):
    """``await receive()``, or TimeoutError at the loop time ``deadline``."""
    timeout_at = getattr(asyncio, "timeout_at", None)  # 3.11+: no extra task per message
    if timeout_at is not None:
        async with timeout_at(deadline):
            return await receive()
    left = max(0.0, deadline - asyncio.get_running_loop().time())
    return await asyncio.wait_for(receive(), left)  # pragma: no cover - Python 3.10


def too_large(size: int, limit: int) -> HTTPError:
    # close the connection: the rest of the body is not worth reading
    return HTTPError(413, "RESOURCE_EXHAUSTED",
                     f"request body of {size} bytes exceeds the gateway's limit of {limit} bytes",
                     headers=[("connection", "close")])


def _field_message(exc: msgspec.ValidationError, where: str) -> str:
    text = str(exc)
    if where == "body":
        return text
    # "... - at `$.limit`" -> "... - query parameter `limit`"
    return text.replace(" - at `$.", f" - {where} `").replace("`$`", where)


@functools.lru_cache(maxsize=None)
def _list_fields(typ: type) -> frozenset[str]:
    info = msgspec.inspect.type_info(typ)
    out = set()
    for f in info.fields:
        t = f.type.type if isinstance(f.type, msgspec.inspect.Metadata) else f.type
        if isinstance(t, (msgspec.inspect.ListType, msgspec.inspect.SetType,
                          msgspec.inspect.VarTupleType)):
            out.add(f.name)
    return frozenset(out)


def parse_query(query: dict[str, list[str]], typ: type) -> Any:
    """Convert a query string into the Struct ``typ``; unknown keys are ignored."""
    lists = _list_fields(typ)
    raw: dict[str, Any] = {}
    for name in typ.__struct_fields__:
        values = query.get(name)
        if not values:
            continue
        if name in lists:
            raw[name] = [p for v in values for p in v.split(",") if p != ""]
        else:
            raw[name] = values[-1]
    try:
        out = msgspec.convert(raw, typ, strict=False)
    except msgspec.ValidationError as exc:
        raise invalid(f"invalid query: {_field_message(exc, 'query parameter')}") from None
    for name in raw:
        # lax conversion reads "null" as None; absent is how a query says "no value"
        if getattr(out, name) is None:
            raise invalid(f"invalid query: {raw[name]!r} is not a value of query parameter `{name}`")
    return out


def _params(header: str) -> dict[str, str]:
    """``a=1; b="x y"`` -> {"a": "1", "b": "x y"} (after the first ``;``-separated item)."""
    out = {}
    for item in header.split(";")[1:]:
        if "=" in item:
            k, v = item.split("=", 1)
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1].replace('\\"', '"')
            out[k.strip().lower()] = v
    return out


class Part(msgspec.Struct, frozen=True):
    """One part of a multipart/form-data body."""

    name: str
    filename: str | None
    content_type: str
    data: bytes


def parse_multipart(body: bytes, content_type: str) -> dict[str, Part]:
    """Split a multipart/form-data body into its named parts (400 if malformed)."""
    boundary = _params(content_type).get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise invalid("multipart/form-data without a valid boundary")
    delim = b"\r\n--" + boundary.encode("latin-1")
    pieces = (b"\r\n" + body).split(delim)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise invalid("malformed multipart body: missing parts or closing boundary")
    parts: dict[str, Part] = {}
    for piece in pieces[1:-1]:
        line_end = piece.find(b"\r\n")
        if line_end < 0 or piece[:line_end].strip():
            raise invalid("malformed multipart body: bad boundary line")
        head, sep, data = piece[line_end + 2:].partition(b"\r\n\r\n")
        if not sep:
            raise invalid("malformed multipart body: part without a blank line after its headers")
        headers = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        disp = headers.get("content-disposition", "")
        params = _params(disp)
        if not disp.lower().startswith("form-data") or "name" not in params:
            raise invalid("malformed multipart body: a part has no form-data name")
        parts[params["name"]] = Part(params["name"], params.get("filename"),
                                     headers.get("content-type", "text/plain").split(";")[0].strip().lower(),
                                     data)
    return parts


# ---------------------------------------------------------------- responses


def encode(obj: Any, msgpack: bool) -> tuple[bytes, str]:
    """Encode a Struct (or builtins) as MessagePack or JSON: ``(body, media type)``."""
    if msgpack:
        return _msgpack_encoder.encode(obj), MSGPACK
    return _json_encoder.encode(obj), JSON


class Response:
    """A complete response: status, headers and one body."""

    __slots__ = ("status", "body", "headers")

    def __init__(self, body: bytes = b"", status: int = 200, *, content_type: str | None = None,
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        self.status = status
        self.body = body
        self.headers: list[tuple[str, str]] = list(headers)
        if content_type:
            self.headers.append(("content-type", content_type))

    async def __call__(self, send, receive=None) -> None:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers]
        headers.append((b"content-length", str(len(self.body)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def data(obj: Any, req: Request, status: int = 200, *, headers: Iterable[tuple[str, str]] = ()) -> Response:
    """A negotiated (JSON or MessagePack) response carrying ``obj``."""
    body, ctype = encode(obj, req.wants_msgpack)
    return Response(body, status, content_type=ctype, headers=headers)


def error_response(exc: HTTPError, req: Request | None) -> Response:
    from .models import ErrorBody

    body = ErrorBody(code=exc.code, message=exc.message, execution_id=exc.execution_id)
    msgpack = req is not None and req.wants_msgpack
    raw, ctype = encode(body, msgpack)
    return Response(raw, exc.status, content_type=ctype, headers=exc.headers)


class StreamResponse:
    """A streamed body (Server-Sent Events); stops when the client goes away."""

    def __init__(self, chunks: AsyncIterator[bytes], status: int = 200, *,
                 content_type: str = SSE, headers: Iterable[tuple[str, str]] = (),
                 release=None) -> None:
        self.chunks = chunks
        self.status = status
        self.headers = [("content-type", content_type), ("cache-control", "no-cache"),
                        ("x-accel-buffering", "no"), *headers]
        #: called once when the stream ends, however it ends (a subscriber slot)
        self.release = release

    async def __call__(self, send, receive) -> None:
        try:
            await self._run(send, receive)
        finally:
            if self.release is not None:
                self.release()

    async def _run(self, send, receive) -> None:
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers]})
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (pump, watch):
                t.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # pragma: no cover - best effort
                    pass
        if pump.done() and not pump.cancelled() and pump.exception() is None:
            await send({"type": "http.response.body", "body": b""})

    async def _pump(self, send) -> None:
        async for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _until_disconnect(receive) -> None:
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return


def sse(event: str, payload: str | bytes, *, id: int | str | None = None) -> bytes:
    """One Server-Sent Event; multi-line data becomes several ``data:`` lines."""
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8", "replace")
    lines = [f"event: {event}"]
    if id is not None:
        lines.append(f"id: {id}")
    lines.extend(f"data: {line}" for line in payload.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def sse_json(event: str, obj: Any, *, id: int | str | None = None) -> bytes:
    return sse(event, _json_encoder.encode(obj), id=id)


SSE_KEEPALIVE = b": keepalive\n\n"
