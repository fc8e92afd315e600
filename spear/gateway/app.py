"""The gateway as an ASGI application: dispatch, auth, errors, static pages.

:class:`Gateway` owns the SMS clients (one for control calls and event
subscriptions with the configured timeout, one for invocations that may wait
much longer), the live-figure sampler and the captured logs. It is
started by the ASGI lifespan (or lazily by the first request).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import mimetypes
import time
from pathlib import Path

import msgspec

from .. import errors, tracing
from .. import protocol as P
from ..client import AsyncClient
from ..roles import allowed, redact_spec
from . import openapi
from .guard import Guard, SubscriberLimit
from .http import (ClientGone, HTTPError, Request, Response, StreamResponse, error_response,
                   parse_query)
from .live import LogStore, Monitor
from .metrics import GatewayMetrics
from .routes import ROUTES, Route
from .settings import Settings
from ..tracing import Tracer

log = logging.getLogger("spear.gateway")

STATIC = Path(__file__).resolve().parent / "static"


def _files(directory: Path | None) -> dict[str, Path]:
    """Servable files of a directory by name (a fixed set: no path traversal)."""
    if directory is None or not directory.is_dir():
        return {}
    return {p.name: p for p in directory.iterdir()
            if p.is_file() and not p.name.endswith((".map", ".j2"))}


def _swagger_dir() -> Path | None:
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    return Path(swagger_ui_bundle.swagger_ui_path)


class Gateway:
    """ASGI callable: ``uvicorn.run(Gateway(settings))``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        g = settings.gateway
        self.tokens = settings.tokens
        self.client: AsyncClient | None = None
        self.invoker: AsyncClient | None = None
        self.monitor: Monitor | None = None
        self.logs = LogStore(max(1, g.log_executions), 64 * 1024)
        self.guard = Guard(settings.allowed_hosts, g.allowed_origins)
        self.subscribers = SubscriberLimit(g.max_subscriptions_per_key)
        self._static = {**{f"/admin/{n}": p for n, p in _files(STATIC).items()},
                        **{f"/docs/{n}": p for n, p in _files(_swagger_dir()).items()}}
        self._cache: dict[str, bytes] = {}
        self._exact: dict[tuple[str, str], Route] = {}
        self._patterns: list[Route] = []
        for r in ROUTES:
            if r.regex is None:
                self._exact[(r.method, r.path)] = r
            else:
                self._patterns.append(r)
        self._openapi = None
        self._nodes: tuple[float, list] = (0.0, [])
        self._started = False
        self.metrics = GatewayMetrics()
        self.tracer: Tracer = tracing.OFF

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Open the SMS clients and start sampling (inside the running loop)."""
        if self._started:
            return
        s = self.settings
        self.client = AsyncClient(s.sms, timeout=s.timeout, security=s.security)
        self.invoker = AsyncClient(s.sms, timeout=s.gateway.invoke_timeout, security=s.security)
        self.monitor = Monitor(self.client, interval=s.gateway.sample_interval,
                               window=s.gateway.history)
        self.monitor.start()
        if s.tracing is not None:
            self.tracer = Tracer.from_config(s.tracing, "spear-gateway")
        self._started = True
        log.info("gateway for SMS %s on http://%s:%d (docs /docs, admin /admin)%s", s.sms, s.host,
                 s.port, "" if self.tokens else "; no bearer tokens: the HTTP API is OPEN")

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self.monitor.stop()
        await self.client.close()
        await self.invoker.close()
        await asyncio.to_thread(self.tracer.close)  # sends the spans still buffered

    async def _lifespan(self, receive, send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    self.start()
                except Exception as exc:  # pragma: no cover - reported by the server
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---------------------------------------------------------------- ASGI

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            return await self._lifespan(receive, send)
        if kind != "http":
            return
        self.start()
        req = Request(scope, receive)
        t0 = time.perf_counter()
        req.scope["spear.route"] = "unmatched"
        try:
            resp = await self.handle(req)
        except HTTPError as exc:
            resp = error_response(exc, req)
        except errors.SpearError as exc:
            resp = error_response(HTTPError.of(exc), req)
        except ClientGone:
            return
        except Exception as exc:
            log.exception("%s %s failed", req.method, req.path)
            resp = error_response(HTTPError(500, "INTERNAL", f"{type(exc).__name__}: {exc}"), req)
        elapsed = time.perf_counter() - t0
        self.metrics.observe(req.scope["spear.route"], req.method, resp.status, elapsed)
        if self.settings.gateway.access_log:
            log.info("%s %s -> %s in %.2f ms", req.method, req.path, resp.status, elapsed * 1e3)
        if isinstance(resp, StreamResponse):
            self.metrics.streams.inc()
            try:
                await resp(send, receive)
            finally:
                self.metrics.streams.dec()
        else:
            await resp(send, receive)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        r = self._exact.get((method, path))
        if r is not None:
            return r, {}
        methods = {m for (m, p) in self._exact if p == path}
        for r in self._patterns:
            m = r.regex.match(path)
            if m is not None:
                if r.method == method:
                    return r, m.groupdict()
                methods.add(r.method)
        if methods:
            raise HTTPError(405, "INVALID_ARGUMENT", f"{method} is not allowed on {path}",
                            headers=[("allow", ", ".join(sorted(methods)))])
        raise HTTPError(404, "NOT_FOUND", f"no route {path}")

    async def handle(self, req: Request):
        refusal = self.guard.check(req.method, req.scope.get("headers", ()))
        if refusal is not None:  # before any page, route, body or SMS call
            raise refusal
        if req.method == "GET" and not req.path.startswith(("/v1/", "/healthz")):
            page = self.page(req.path)
            if page is not None:
                return page
        route, raw_params = self.match(req.method, req.path)
        req.scope["spear.route"] = route.path
        if self.tokens and route.op is not None:
            req.role = self.authorize(req, route)
        params = {}
        for name, value in raw_params.items():
            params[name] = _path_param(name, value, route.params.get(name, str))
        query = parse_query(req.query, route.query) if route.query is not None else None
        if route.body is not None:
            await req.read_body(self.settings.gateway.max_body, self.settings.gateway.body_timeout)
        return await route.handler(self, req, query, **params)

    # ---------------------------------------------------------------- auth

    def authorize(self, req: Request, route: Route) -> str:
        """The caller's role from its bearer token; 401/403 as the HTTP spec says."""
        if not req.headers.get("authorization", ""):
            raise HTTPError(401, "UNAUTHENTICATED", "a bearer token is required",
                            headers=[("www-authenticate", 'Bearer realm="spear"')])
        token = _bearer(req)
        role = None
        if token:
            for known, r in self.tokens.items():
                # compare every token, in constant time, so timing reveals nothing
                if hmac.compare_digest(known.encode(), token.encode()):
                    role = r
        if role is None:
            raise HTTPError(401, "UNAUTHENTICATED", "unknown bearer token",
                            headers=[("www-authenticate", 'Bearer realm="spear", error="invalid_token"')])
        if not allowed(role, route.op):
            raise HTTPError(403, "PERMISSION_DENIED",
                            f"role {role!r} may not {route.summary.lower()} ({route.op.__name__})")
        return role

    def visible_spec(self, req: Request, spec: P.FunctionSpec) -> P.FunctionSpec:
        """``spec`` as this caller may see it (environment values by role).

        Every route that answers with a FunctionSpec passes it through here.
        With tokens, a request that has no role (it should not happen: such
        routes are authorized) sees what a viewer sees.
        """
        role = (req.role or "viewer") if self.tokens else ""
        return redact_spec(spec, role)

    def subscription(self, req: Request):
        """Take one stream slot of this caller's key (bearer token, else client
        address); the release callable, or 429 when the key has them all."""
        token = _bearer(req) if self.tokens else ""
        client = req.scope.get("client") or ("", 0)
        return self.subscribers.take(SubscriberLimit.key_of(token, str(client[0])))

    # ---------------------------------------------------------------- nodes

    async def node_address(self, ref: str) -> str | None:
        """Resolve a node id, name or address to the address of a node the SMS knows.

        Only registered nodes can be targeted, so the gateway never connects
        to an address a caller made up.
        """
        if not ref:
            return None
        ts, nodes = self._nodes
        for attempt in range(2):
            for n in nodes:
                if ref in (n.node_id, n.name, n.address) and n.address:
                    return n.address
            if attempt == 0 and time.monotonic() - ts > 0.5:
                nodes = await self.client.nodes()
                self._nodes = (time.monotonic(), nodes)
            else:
                break
        raise HTTPError(404, "NOT_FOUND", f"no node {ref!r} is registered with the SMS")

    # ---------------------------------------------------------------- pages

    def openapi_bytes(self) -> bytes:
        if self._openapi is None:
            self._openapi = msgspec.json.encode(openapi.build(bearer=bool(self.tokens)))
        return self._openapi

    def page(self, path: str):
        if path == "/":
            return Response(b"", 307, headers=[("location", "/admin")])
        if path == "/metrics":
            body, ctype = self.metrics.exposition()
            return Response(body, content_type=ctype)
        if path == "/favicon.ico":
            return self._file("/docs/favicon-32x32.png", "image/png")
        if path == "/openapi.json":
            return Response(self.openapi_bytes(), content_type="application/json")
        if path in ("/docs", "/docs/"):
            return self._file("/admin/docs.html", "text/html; charset=utf-8")
        if path in ("/admin", "/admin/"):
            return self._file("/admin/admin.html", "text/html; charset=utf-8")
        if path == "/docs/swagger-initializer.js":
            return self._file("/admin/docs-init.js", "text/javascript; charset=utf-8")
        if path in self._static:
            return self._file(path)
        if path.startswith("/docs/") and _swagger_dir() is None:
            raise HTTPError(503, "UNAVAILABLE", "Swagger UI assets are missing: "
                                                "pip install swagger-ui-bundle-v2")
        return None

    def _file(self, key: str, ctype: str | None = None) -> Response:
        path = self._static.get(key)
        if path is None:
            raise HTTPError(404, "NOT_FOUND", f"no page {key}")
        body = self._cache.get(key)
        if body is None:
            body = self._cache[key] = path.read_bytes()
        ctype = ctype or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype = ctype.split(";")[0] + "; charset=utf-8"
        return Response(body, content_type=ctype, headers=[("cache-control", "no-cache")])


def _bearer(req: Request) -> str:
    """The request's bearer token; "" when it sends none or another scheme."""
    scheme, _, token = req.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _path_param(name: str, value: str, typ) -> str:
    # ASGI paths arrive percent-decoded already
    try:
        return msgspec.convert(value, typ)
    except msgspec.ValidationError as exc:
        raise HTTPError(400, "INVALID_ARGUMENT",
                        f"invalid path parameter `{name}`: {str(exc).split(' - ')[0]}") from None
