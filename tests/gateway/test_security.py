"""Adversarial tests of the gateway's front door.

What a hostile web page, a DNS-rebinding name, a slow-client flood or a
greedy viewer can do to a gateway on loopback: each test attacks the one
place that rule lives (``guard.Guard.check``, ``connections.protocol_class``,
``Request.read_body``, ``routes.trace_id_of``, ``Gateway.subscription``,
``Gateway.visible_spec``) and checks that nothing ran behind a refusal.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import msgspec
import pytest
import requests

from spear import errors, protocol as P, roles
from spear.client import AsyncClient, Client
from spear.cluster import free_port
from spear.config import Config
from spear.gateway.guard import Guard, split_host
from spear.gateway.settings import from_config

from .conftest import start_gateway, stop_gateway
from tests.helpers import add_spec, wait_for

TOKENS = {"sec-admin": "admin", "sec-deployer": "deployer", "sec-invoker": "invoker",
          "sec-viewer": "viewer", "sec-viewer-2": "viewer"}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def port_of(url: str) -> int:
    return urlsplit(url).port


def executions_of(api, function: str) -> int:
    r = api.get("/v1/executions", params={"function": function})
    assert r.status_code == 200, r.text
    return r.json()["total"]


@pytest.fixture(scope="module")
def guarded(cluster, tmp_path_factory):
    """A gateway with bearer tokens, 2 streams per key and a 1 s body deadline."""
    d = tmp_path_factory.mktemp("gwsec")
    cfg = d / "spear.toml"
    cfg.write_text("[security]\ntokens = { " + ", ".join(f'"{t}" = "{r}"' for t, r in TOKENS.items())
                   + " }\n[gateway]\nmax_subscriptions_per_key = 2\nbody_timeout = 1.0\n"
                     "header_timeout = 2.0\n")
    g = start_gateway(cluster.sms_addr, d / "gateway.log", config=str(cfg))
    try:
        yield g
    finally:
        stop_gateway(g.proc)


# ---------------------------------------------------------------- Host (DNS rebinding)


def test_foreign_host_names_are_refused(api):
    """A page on evil.example whose name now points at 127.0.0.1 still says Host: evil.example."""
    port = port_of(api.url)
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}",
                 f"localhost.evil.example:{port}", "localhost:x", "[::1", ""):
        for method, path in (("GET", "/v1/nodes"), ("GET", "/admin"), ("GET", "/openapi.json")):
            r = api(method, path, headers={"Host": host})
            assert r.status_code == 400, (host, path, r.status_code)
            assert r.json()["code"] == "INVALID_ARGUMENT" and "allowed_hosts" in r.json()["message"]
    name = "gw-sec-rebind"
    spec = add_spec(name)
    r = api.post("/v1/functions", data=msgspec.json.encode(spec),
                 headers={"Content-Type": "application/json", "Host": f"evil.example:{port}"})
    assert r.status_code == 400
    assert api.get(f"/v1/functions/{name}").status_code == 404  # nothing was deployed


def test_loopback_host_names_are_served(api):
    port = port_of(api.url)
    for host in ("127.0.0.1", f"127.0.0.1:{port}", "localhost", f"localhost:{port}",
                 f"LOCALHOST:{port}", "[::1]", f"[::1]:{port}"):
        r = api.get("/v1/nodes", headers={"Host": host})
        assert r.status_code == 200, (host, r.text)


def test_host_and_origin_rules_without_a_cluster():
    g = Guard(["127.0.0.1", "localhost", "[::1]", "*.spear.test"], ["http://localhost:3000"])

    def check(method, host, **h):
        headers = [(b"host", host.encode())] + [(k.replace("_", "-").encode(), v.encode())
                                                 for k, v in h.items()]
        refusal = g.check(method, headers)
        return None if refusal is None else refusal.status

    assert check("GET", "api.spear.test:80") is None and check("GET", "spear.test") == 400
    assert check("GET", "x.evil.example") == 400
    assert Guard(["*"]).check("GET", [(b"host", b"x.evil.example")]) is None
    assert g.check("GET", [(b"host", b"localhost"), (b"host", b"evil.example")]).status == 400
    assert g.check("GET", []).status == 400  # no Host at all
    assert check("POST", "localhost:7780", origin="http://localhost:3000") is None  # allowed_origins
    assert check("POST", "localhost:7780", origin="http://localhost:3001") == 403
    assert check("POST", "localhost:7780", origin="http://localhost:7780") is None
    assert check("POST", "localhost:7780", origin="https://localhost:7780") is None  # TLS proxy
    assert check("POST", "localhost:7780", origin="null") == 403
    assert check("POST", "localhost:7780", sec_fetch_site="same-site") == 403
    assert check("POST", "localhost:7780", sec_fetch_site="none") is None  # typed by the user
    assert check("DELETE", "localhost:7780", sec_fetch_site="cross-site",
                 origin="http://localhost:3000") is None
    assert check("GET", "localhost", origin="http://evil.example") is None  # reads: no CORS, no leak
    assert split_host("[::1]:80") == ("[::1]", "80") and split_host("a b") is None
    # the listen address is served when it is one IP (an IP cannot be rebound)
    s = from_config(Config(), http="10.1.2.3:7780")
    assert s.allowed_hosts == ["127.0.0.1", "localhost", "[::1]", "10.1.2.3"]
    assert from_config(Config(), http="0.0.0.0:7780").allowed_hosts == ["127.0.0.1", "localhost", "[::1]"]
    s = from_config(Config(), overrides={"allowed_hosts": ["spear.lan"]})
    assert Guard(s.allowed_hosts).check("GET", [(b"host", b"localhost")]).status == 400


# ---------------------------------------------------------------- cross-site writes


def test_cross_site_writes_are_refused_and_nothing_runs(api):
    name = "gw-sec-csrf"
    spec = add_spec(name)
    body = msgspec.json.encode(spec)
    hostile = [{"Origin": "http://evil.example"}, {"Origin": "null"},
               {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
               {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}]
    for h in hostile:
        r = api.post("/v1/functions", data=body, headers={"Content-Type": "application/json", **h})
        assert r.status_code == 403, (h, r.status_code, r.text)
        assert r.json()["code"] == "PERMISSION_DENIED"
        # a form post (text/plain needs no CORS preflight) to run a function
        r = api.post("/v1/functions/gw-add-anything/invoke?args=1,2", data="x",
                     headers={"Content-Type": "text/plain", **h})
        assert r.status_code == 403, h
    assert api.get(f"/v1/functions/{name}").status_code == 404

    api.deploy(spec)  # a curl-like client may
    for h in hostile:
        r = api.post(f"/v1/functions/{name}/invoke?args=1,2", headers=h)
        assert r.status_code == 403, h
        assert api.delete(f"/v1/functions/{name}", headers=h).status_code == 403
        assert api.post("/v1/executions/x/cancel", headers=h).status_code == 403
    assert executions_of(api, name) == 0  # nothing ran
    assert api.get(f"/v1/functions/{name}").status_code == 200  # nothing was removed
    assert api.delete(f"/v1/functions/{name}").status_code == 204


def test_same_origin_and_non_browser_writes_are_accepted(api):
    port = port_of(api.url)
    name = "gw-sec-same"
    api.deploy(add_spec(name))
    cases = [{},  # curl, the CLI, scripts
             {"Origin": api.url},  # the admin page and Swagger UI
             {"Origin": api.url, "Sec-Fetch-Site": "same-origin"},
             {"Sec-Fetch-Site": "same-origin"},
             {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"}]
    for h in cases:
        r = api.post(f"/v1/functions/{name}/invoke?args=2,3", headers=h)
        assert r.status_code == 200 and r.content == b"5", (h, r.status_code, r.text)
    # reads from another site are answered but carry no CORS header: the page cannot read them
    r = api.get("/v1/nodes", headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    assert executions_of(api, name) == len(cases)
    assert api.delete(f"/v1/functions/{name}", headers={"Origin": api.url}).status_code == 204


# ---------------------------------------------------------------- trace ids


def test_a_bad_trace_id_is_refused_before_anything_runs(api):
    name = "gw-sec-trace"
    api.deploy(add_spec(name))
    path = f"/v1/functions/{name}/invoke"
    for mode in ("sync", "async", "stream"):
        for bad in ("a\r\nX-Injected: 1", "a\nb", "a b", "x" * 129, "é"):
            r = api.post(path, params={"args": "1,2", "mode": mode, "trace_id": bad})
            assert r.status_code == 400, (mode, bad, r.status_code, r.text[:200])
            assert r.json()["code"] == "INVALID_ARGUMENT"
        for bad in ("a b", "a,b", "x" * 129):
            r = api.post(path, params={"args": "1,2", "mode": mode}, headers={"X-Spear-Trace-Id": bad})
            assert r.status_code == 400 and r.json()["code"] == "INVALID_ARGUMENT", (mode, bad)
    assert executions_of(api, name) == 0
    # a good one runs and comes back in the answer's headers
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    r = api.post(path, params={"args": "1,2", "trace_id": good})
    assert r.status_code == 200 and r.headers["x-spear-trace-id"] == good
    r = api.post(path, params={"args": "1,2"}, headers={"X-Spear-Trace-Id": "req/7:a=b+c"})
    assert r.status_code == 200 and r.headers["x-spear-trace-id"] == "req/7:a=b+c"
    assert executions_of(api, name) == 2
    assert api.delete(f"/v1/functions/{name}").status_code == 204


def test_the_client_refuses_a_bad_trace_id_before_sending():
    # nothing listens there: a refusal that needed the network would be UNAVAILABLE
    addr = f"tcp://127.0.0.1:{free_port()}"
    c = Client(addr, timeout=0.5)
    try:
        for call in (lambda: c.invoke("f", b"", trace_id="a\r\nb"),
                     lambda: c.submit("f", b"", trace_id="a b"),
                     lambda: list(c.stream("f", b"", trace_id="x" * 129))):
            with pytest.raises(errors.InvalidArgument, match="trace_id"):
                call()
    finally:
        c.close()

    async def run():
        ac = AsyncClient(addr, timeout=0.5)
        try:
            with pytest.raises(errors.InvalidArgument, match="trace_id"):
                await ac.submit("f", b"", trace_id="a\nb")
        finally:
            await ac.close()

    import asyncio

    asyncio.run(run())


# ---------------------------------------------------------------- subscriptions per key


def _stream(g, path: str, token: str) -> requests.Response:
    return requests.get(g.url + path, headers=bearer(token), stream=True, timeout=30)


def _first_line(r: requests.Response) -> bytes:
    # read from the raw stream: a dropped iter_lines() generator closes the connection
    line = b""
    while not line.endswith(b"\n"):
        line += r.raw.read(1)
    return line.strip()


def test_one_token_cannot_hold_every_stream(guarded):
    held = []
    try:
        for _ in range(2):
            r = _stream(guarded, "/v1/events", "sec-viewer")
            held.append(r)
            assert r.status_code == 200 and _first_line(r) == b"retry: 1000"
        for path in ("/v1/events", "/v1/live/stream"):
            r = _stream(guarded, path, "sec-viewer")
            assert r.status_code == 429, (path, r.status_code)
            assert r.json()["code"] == "RESOURCE_EXHAUSTED"
            assert "max_subscriptions_per_key" in r.json()["message"]
            r.close()
        # other tokens, even of the same role, keep their own slots
        for token, path in (("sec-viewer-2", "/v1/events"), ("sec-admin", "/v1/live/stream")):
            r = _stream(guarded, path, token)
            held.append(r)
            assert r.status_code == 200 and _first_line(r).startswith(b"retry:" if "events" in path
                                                                       else b"event:"), token
        # a closed stream gives its slot back
        held.pop(0).close()

        def reopened():
            r = _stream(guarded, "/v1/events", "sec-viewer")
            if r.status_code == 200:
                held.append(r)
                return True
            r.close()
            return False
        wait_for(reopened, 20, "the viewer's slot to come back", step=0.1)
    finally:
        for r in held:
            r.close()


def test_without_tokens_the_limit_is_per_client_address():
    """An open gateway (no SMS needed: the stream opens before any event comes)."""
    from spear.gateway import GatewayThread

    s = from_config(Config(), sms=f"tcp://127.0.0.1:{free_port()}", http="127.0.0.1:0",
                    overrides={"max_subscriptions_per_key": 1})
    with GatewayThread(s) as g:
        first = requests.get(g.url + "/v1/events", stream=True, timeout=30)
        try:
            assert first.status_code == 200 and _first_line(first) == b"retry: 1000"
            r = requests.get(g.url + "/v1/live/stream", stream=True, timeout=30)
            assert r.status_code == 429 and r.json()["code"] == "RESOURCE_EXHAUSTED"
            # a bearer header means nothing without tokens: same client, same key
            r = requests.get(g.url + "/v1/events", headers=bearer("anything"), stream=True, timeout=30)
            assert r.status_code == 429
        finally:
            first.close()


# ---------------------------------------------------------------- environment values


def test_env_values_are_shown_by_role_and_secrets_never(guarded, api):
    name = "gw-sec-env"
    spec = msgspec.structs.replace(add_spec(name), env={"GREETING": "hi", "API_KEY": "s3cret-value"},
                                   secret_env=["API_KEY"])
    r = guarded.post("/v1/functions", data=msgspec.json.encode(spec),
                     headers={**bearer("sec-deployer"), "Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    seen = {}
    for token in ("sec-viewer", "sec-invoker", "sec-deployer", "sec-admin"):
        for accept in ("application/json", "application/msgpack"):
            r = guarded.get(f"/v1/functions/{name}", headers={**bearer(token), "Accept": accept})
            assert r.status_code == 200, (token, r.text)
            assert b"s3cret-value" not in r.content, token
            env = (r.json() if accept == "application/json" else msgspec.msgpack.decode(r.content))["env"]
            seen[token] = env
    assert seen["sec-viewer"] == seen["sec-invoker"] == {"GREETING": roles.REDACTED, "API_KEY": roles.SECRET}
    assert seen["sec-deployer"] == seen["sec-admin"] == {"GREETING": "hi", "API_KEY": roles.SECRET}
    # an open gateway (no tokens): values, but never the secret one
    r = api.get(f"/v1/functions/{name}")
    assert r.status_code == 200 and r.json()["env"] == {"GREETING": "hi", "API_KEY": roles.SECRET}
    assert b"s3cret-value" not in r.content
    assert guarded.delete(f"/v1/functions/{name}", headers=bearer("sec-admin")).status_code == 204


# ---------------------------------------------------------------- slow clients


def _raw(url: str) -> socket.socket:
    u = urlsplit(url)
    return socket.create_connection((u.hostname, u.port), timeout=30)


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def test_a_connection_that_never_finishes_its_headers_is_closed(guarded):
    """header_timeout = 2 s: a silent connection and a half-sent request are both dropped."""
    silent, partial = _raw(guarded.url), _raw(guarded.url)
    try:
        partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for s in (silent, partial):
            assert _read_all(s) == b""  # closed by the gateway, no request was answered
    finally:
        silent.close()
        partial.close()


def test_a_body_that_never_arrives_gets_408_and_nothing_runs(guarded):
    """body_timeout = 1 s: the request is answered 408 and the function never sees it."""
    name = "gw-sec-body"
    r = guarded.post("/v1/functions", data=msgspec.json.encode(add_spec(name)),
                     headers={**bearer("sec-admin"), "Content-Type": "application/json"})
    assert r.status_code == 201
    s = _raw(guarded.url)
    try:
        s.sendall(f"POST /v1/functions/{name}/invoke?args=1,2 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  "Authorization: Bearer sec-invoker\r\nContent-Type: text/plain\r\n"
                  "Content-Length: 1000\r\n\r\npartial".encode())
        answer = _read_all(s)
    finally:
        s.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"DEADLINE_EXCEEDED" in answer and b"body_timeout" in answer
    r = guarded.get("/v1/executions", params={"function": name}, headers=bearer("sec-admin"))
    assert r.json()["total"] == 0
    assert guarded.delete(f"/v1/functions/{name}", headers=bearer("sec-admin")).status_code == 204


@pytest.fixture
def flood_gateway(cluster, tmp_path):
    """A gateway with room for 512 connections, of which at most 64 may be still-silent."""
    cfg = tmp_path / "spear.toml"
    cfg.write_text("[gateway]\nmax_connections = 512\nmax_pending = 64\nheader_timeout = 60.0\n")
    g = start_gateway(cluster.sms_addr, tmp_path / "gateway.log", config=str(cfg))
    try:
        yield g
    finally:
        stop_gateway(g.proc)


SLOW = 1500  # three times max_connections: without eviction every later request gets 503
BATCH = 30


def test_a_slow_client_flood_does_not_starve_good_clients(flood_gateway):
    g = flood_gateway
    u = urlsplit(g.url)
    slow: list[socket.socket] = []
    served = 0
    try:
        for i in range(SLOW):
            s = socket.create_connection((u.hostname, u.port), timeout=30)
            slow.append(s)
            if i % 2:  # half of them start a request and never finish its headers
                s.sendall(b"POST /v1/functions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
            if i % BATCH == BATCH - 1:
                # a well-behaved client, on a fresh connection, amid the flood
                path = "/healthz" if (i // BATCH) % 2 else "/v1/nodes"
                r = requests.get(g.url + path, headers={"Connection": "close"}, timeout=30)
                assert r.status_code == 200, (i, path, r.status_code, r.text[:200])
                served += 1
        assert served == SLOW // BATCH
        # the flood is still open (client side): a keep-alive client is served too
        with requests.Session() as sess:
            for _ in range(20):
                assert sess.get(g.url + "/v1/stats", timeout=30).status_code == 200
    finally:
        for s in slow:
            s.close()
    assert g.proc.poll() is None
