"""Every REST route against a real cluster, with good and bad input."""

from __future__ import annotations

import base64
import json
import os
import time

import msgspec
import pytest
import requests

from spear import protocol as P
from spear.gateway import openapi
from spear.gateway.routes import ROUTES

from .conftest import MAX_BODY, hello_spec, python_spec
from tests.helpers import add_spec, wait_for

JSON = {"Content-Type": "application/json"}
MSGPACK = "application/msgpack"


def assert_error(r: requests.Response, status: int, code: str, *words: str) -> dict:
    """The response is the error body with this status and wire code."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    ctype = r.headers["content-type"]
    if ctype == MSGPACK:  # negotiated: the request was MessagePack
        body = msgspec.msgpack.decode(r.content)
    else:
        assert ctype.startswith("application/json"), r.headers
        body = r.json()
    assert body["code"] == code, body
    for w in words:
        assert w in body["message"], (w, body)
    return body


@pytest.fixture(scope="module")
def fns(api):
    """The functions most tests use, deployed once."""
    api.deploy(add_spec("gw-add"))
    api.deploy(hello_spec())
    api.deploy(python_spec("gw-fib", "fib"))
    api.deploy(P.FunctionSpec(name="gw-nap", runtime="process", command=["sleep", "5"]))
    return api


# ---------------------------------------------------------------- health, docs


def test_health_openapi_and_pages(api):
    r = api.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["sms_reachable"]

    doc = api.get("/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    for route in ROUTES:
        assert route.method.lower() in doc["paths"][route.path], route.path
    # the schemas are msgspec's own, generated from the wire types (regex dialect aside)
    want = openapi._ecma(msgspec.json.schema_components(
        [P.FunctionSpec, P.ExecutionInfo, P.NodeInfo], ref_template=openapi.REF)[1])
    for name in ("FunctionSpec", "ExecutionInfo", "NodeInfo", "Limits", "Usage"):
        assert doc["components"]["schemas"][name] == want[name]
    assert "\\Z" not in json.dumps(doc)
    assert "securitySchemes" not in doc["components"]  # open gateway

    docs = api.get("/docs")
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
    bundle = api.get("/docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
    assert "javascript" in bundle.headers["content-type"]
    assert "openapi.json" in api.get("/docs/swagger-initializer.js").text
    admin = api.get("/admin")
    assert admin.status_code == 200 and "/admin/admin.js" in admin.text
    assert api.get("/admin/admin.js").status_code == 200
    assert api.get("/", allow_redirects=False).headers["location"] == "/admin"
    # nothing in the pages reaches for another host
    for page in (docs.text, admin.text, api.get("/admin/admin.js").text,
                 api.get("/docs/swagger-initializer.js").text):
        assert "https://" not in page and "http://" not in page


def test_unknown_routes_and_methods(api):
    assert_error(api.get("/v1/nothing"), 404, "NOT_FOUND")
    assert_error(api.get("/docs/../../etc/passwd"), 404, "NOT_FOUND")
    r = api("PUT", "/v1/functions/x")
    assert_error(r, 405, "INVALID_ARGUMENT")
    assert set(r.headers["allow"].split(", ")) == {"GET", "DELETE"}


# ---------------------------------------------------------------- nodes, stats


def test_nodes(api, cluster):
    nodes = api.get("/v1/nodes").json()
    assert len(nodes) == 2 and {n["state"] for n in nodes} == {"ready"}
    n = nodes[0]
    assert n["capacity"]["cores"] > 0 and "usage" in n and n["address"].startswith("tcp://")
    assert api.get(f"/v1/nodes/{n['node_id']}").json()["node_id"] == n["node_id"]
    assert api.get(f"/v1/nodes/{n['name']}").json()["node_id"] == n["node_id"]
    assert api.get("/v1/nodes?state=ready").json() and api.get("/v1/nodes?state=gone").json() == []
    assert_error(api.get("/v1/nodes/no-such-node"), 404, "NOT_FOUND")
    assert_error(api.get("/v1/nodes?state=asleep"), 400, "INVALID_ARGUMENT", "state")
    # the gateway's own Prometheus figures, by route template
    m = api.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    assert 'spear_gateway_requests_total{method="GET",route="/v1/nodes/{node_id}",status="404"}' in m.text
    assert "spear_gateway_request_seconds_bucket" in m.text


def test_stats_and_live_figures(fns):
    api = fns
    start = time.time()  # a sample taken later whose window holds a success holds these
    for i in range(5):    # invocations (an earlier one may hold only other tests' failures)
        assert api.post(f"/v1/functions/gw-add/invoke?args={i},1").status_code == 200
    st = api.get("/v1/stats").json()
    assert st["nodes_ready"] == 2 and st["cores_total"] > 0
    assert st["counts"]["succeeded"] >= 5

    def ours(h):
        return [s for s in h["samples"] if s["ts"] > start and s["latency_p50_ms"] is not None
                and s["pool_hit_rate"] is not None]

    def sampled():
        h = api.get("/v1/live").json()
        return ours(h) and h
    h = wait_for(sampled, 10, "a live sample with latency")
    assert h["interval"] == 0.5
    s = ours(h)[0]
    assert s["nodes_ready"] == 2 and s["latency_p95_ms"] >= s["latency_p50_ms"] > 0
    assert 0 <= s["pool_hit_rate"] <= 1
    assert any(x["invocations_per_s"] > 0 for x in h["samples"])

    with api.get("/v1/live/stream", stream=True, timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r, 2)
    assert events[0][0] == "history" and events[1][0] == "sample"
    assert json.loads(events[1][2])["nodes_ready"] == 2


# ---------------------------------------------------------------- functions


def test_deploy_in_four_encodings_then_remove(api):
    wat = add_spec("gw-add").artifact
    # JSON, artifact base64
    r = api.post("/v1/functions", json={"name": "gw-d1", "runtime": "wasm", "handler": "add",
                                        "artifact": base64.b64encode(wat).decode()})
    assert r.status_code == 201 and r.headers["location"] == "/v1/functions/gw-d1"
    assert r.json()["digest"]
    # MessagePack, artifact binary; the reply follows in MessagePack
    r = api.post("/v1/functions", data=msgspec.msgpack.encode(add_spec("gw-d2")),
                 headers={"Content-Type": MSGPACK})
    assert r.status_code == 201 and r.headers["content-type"] == MSGPACK
    assert msgspec.msgpack.decode(r.content)["name"] == "gw-d2"
    # multipart: a JSON spec part and a file part
    r = api.post("/v1/functions", files={
        "spec": (None, json.dumps({"name": "gw-d3", "runtime": "wasm", "handler": "add"}),
                 "application/json"),
        "artifact": ("add.wat", wat, "application/octet-stream")})
    assert r.status_code == 201, r.text
    # raw artifact body, spec in a header
    r = api.post("/v1/functions", data=wat, headers={
        "Content-Type": "application/wasm",
        "X-Spear-Spec": json.dumps({"name": "gw-d4", "runtime": "wasm", "handler": "add"})})
    assert r.status_code == 201, r.text

    names = {f["name"] for f in api.get("/v1/functions").json()}
    assert {"gw-d1", "gw-d2", "gw-d3", "gw-d4"} <= names
    for name in ("gw-d1", "gw-d2", "gw-d3", "gw-d4"):
        assert api.post(f"/v1/functions/{name}/invoke?args=40&args=2").content == b"42"
    spec = api.get("/v1/functions/gw-d3").json()
    assert spec["handler"] == "add" and spec["artifact"] is None

    # one node lists what it was deployed with, by id, name or address
    node = api.get("/v1/nodes").json()[0]
    for ref in (node["node_id"], node["name"], node["address"]):
        r = api.get(f"/v1/functions?node={requests.utils.quote(ref)}")
        assert r.status_code == 200 and isinstance(r.json(), list)
    assert_error(api.get("/v1/functions?node=tcp://10.9.9.9:1"), 404, "NOT_FOUND", "registered")

    assert api.delete("/v1/functions/gw-d1").status_code == 204
    assert_error(api.get("/v1/functions/gw-d1"), 404, "NOT_FOUND")
    assert_error(api.delete("/v1/functions/gw-d1"), 404, "NOT_FOUND")
    assert "gw-d1" not in {f["name"] for f in api.get("/v1/functions").json()}


@pytest.mark.parametrize("body, words", [
    ({"name": 5, "runtime": "wasm"}, ["Expected `str`, got `int`", "$.name"]),
    ({"runtime": "wasm"}, ["missing required field `name`"]),
    ({"name": "x", "runtime": "cobol"}, ["$.runtime"]),
    ({"name": "bad name!", "runtime": "wasm"}, ["$.name"]),
    ({"name": "x", "runtime": "wasm", "retries": -1}, ["$.retries"]),
    ({"name": "x", "runtime": "wasm", "limits": {"timeout": "slow"}}, ["$.limits.timeout"]),
    ({"name": "x", "runtime": "wasm", "artifact": "not base64!"}, ["$.artifact"]),
    ([1, 2], ["Expected `object`"]),
])
def test_deploy_rejects_bad_specs(api, body, words):
    assert_error(api.post("/v1/functions", json=body), 400, "INVALID_ARGUMENT", *words)


def test_deploy_rejects_bad_bodies(api):
    assert_error(api.post("/v1/functions", data=b'{"name": "x",', headers=JSON), 400,
                 "INVALID_ARGUMENT", "malformed JSON")
    assert_error(api.post("/v1/functions", data=b"\xc1", headers={"Content-Type": MSGPACK}), 400,
                 "INVALID_ARGUMENT", "MessagePack")
    assert_error(api.post("/v1/functions", data=b"\0asm", headers={"Content-Type": "application/wasm"}),
                 400, "INVALID_ARGUMENT", "X-Spear-Spec")
    assert_error(api.post("/v1/functions", data=b"x", headers={
        "Content-Type": "application/wasm", "X-Spear-Spec": '{"name": 1}'}), 400, "INVALID_ARGUMENT")
    assert_error(api.post("/v1/functions", files={"artifact": ("a", b"x")}), 400,
                 "INVALID_ARGUMENT", "spec")
    assert_error(api.post("/v1/functions", data=b"--x\r\nnonsense",
                          headers={"Content-Type": "multipart/form-data; boundary=x"}),
                 400, "INVALID_ARGUMENT", "multipart")


def test_huge_bodies_get_413(api):
    big = b"x" * (MAX_BODY + 1)
    assert_error(api.post("/v1/functions", data=big, headers=JSON), 413, "RESOURCE_EXHAUSTED",
                 str(MAX_BODY))
    assert_error(api.post("/v1/functions/gw-add/invoke", data=big), 413, "RESOURCE_EXHAUSTED")

    # no Content-Length (chunked): counted as it arrives
    def chunks():
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"y" * 65536
    assert_error(api.post("/v1/functions/gw-add/invoke", data=chunks()), 413, "RESOURCE_EXHAUSTED")
    assert api.get("/healthz").status_code == 200


# ---------------------------------------------------------------- invoke


def test_invoke_sync_raw_output_and_headers(fns):
    api = fns
    r = api.post("/v1/functions/gw-hello/invoke", data=b"bob", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200 and r.content == b"hello, bob"
    assert r.headers["content-type"] == "text/plain"  # the input's type is kept
    assert r.headers["x-spear-status"] == "succeeded" and len(r.headers["x-spear-execution-id"]) >= 16
    assert r.headers["x-spear-node"] and r.headers["x-spear-attempts"] == "1"
    timing = dict(p.split(";dur=") for p in r.headers["server-timing"].split(", "))
    assert set(timing) == {"queue", "cold", "run", "total"} and float(timing["total"]) >= 0
    r = api.post("/v1/functions/gw-hello/invoke?output_type=application/x-greeting", data=b"x")
    assert r.headers["content-type"] == "application/x-greeting"
    r = api.post("/v1/functions/gw-hello/invoke", data=b"")
    assert r.content == b"hello, world" and r.headers["content-type"] == "application/octet-stream"
    # numeric args: repeated or comma-separated
    assert api.post("/v1/functions/gw-add/invoke?args=20&args=22").content == b"42"
    assert api.post("/v1/functions/gw-add/invoke?args=1,2").content == b"3"
    # binary input and output travel untouched (1000 bytes of every value)
    api.deploy(python_spec("gw-echo", "echo"))
    blob = bytes(range(256)) * 4
    r = api.post("/v1/functions/gw-echo/invoke", data=blob,
                 headers={"Content-Type": "application/octet-stream"})
    assert r.content == blob


def test_invoke_envelope_json_and_msgpack(fns):
    api = fns
    r = api.post("/v1/functions/gw-hello/invoke?envelope=true&logs=true", data=b"amy")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    env = r.json()
    assert env["execution"]["status"] == "succeeded" and env["output_text"] == "hello, amy"
    assert base64.b64decode(env["output"]) == b"hello, amy"
    assert "greeting written" in env["logs"]
    r = api.post("/v1/functions/gw-hello/invoke?envelope=1", data=b"zed",
                 headers={"Accept": MSGPACK})
    env = msgspec.msgpack.decode(r.content)
    assert r.headers["content-type"] == MSGPACK and env["output"] == b"hello, zed"


def test_invoke_failures_map_to_http_statuses(fns):
    api = fns
    r = api.post("/v1/functions/gw-fib/invoke", data=b"99")
    body = assert_error(r, 502, "FUNCTION_ERROR", "between 0 and 40")
    assert body["execution_id"] == r.headers["x-spear-execution-id"]
    assert r.headers["x-spear-status"] == "failed"
    env = api.post("/v1/functions/gw-fib/invoke?envelope=true", data=b"99").json()
    assert env["execution"]["status"] == "failed" and env["execution"]["error"]["code"] == "FUNCTION_ERROR"
    r = api.post("/v1/functions/gw-nap/invoke?timeout=0.3")
    assert_error(r, 504, "DEADLINE_EXCEEDED")
    assert r.headers["x-spear-status"] == "timed_out"
    assert_error(api.post("/v1/functions/gw-missing/invoke"), 404, "NOT_FOUND", "gw-missing")
    assert_error(api.post("/v1/functions/gw-missing/invoke?mode=stream"), 404, "NOT_FOUND")
    assert_error(api.post("/v1/functions/bad%20name/invoke"), 400, "INVALID_ARGUMENT", "name")


def test_a_failed_execution_shows_its_traceback_and_stderr_tail(fns):
    api = fns
    eid = api.post("/v1/functions/gw-fib/invoke?mode=async", data=b"99").json()["execution_id"]
    err = api.get(f"/v1/executions/{eid}?wait=10").json()["execution"]["error"]
    assert err["code"] == "FUNCTION_ERROR"
    assert 'raise ValueError(f"n must be between 0 and 40, got {n}")' in err["traceback"]
    assert "Traceback (most recent call last)" in err["stderr_tail"]  # the worker printed it too
    # a command writing 1 MiB to stderr: the record keeps its last 4 KiB
    api.deploy(P.FunctionSpec(name="gw-noisy", runtime="process", command=[
        "sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' x >&2; echo END >&2; exit 1"]))
    eid = api.post("/v1/functions/gw-noisy/invoke?mode=async").json()["execution_id"]
    ex = api.get(f"/v1/executions/{eid}?wait=20").json()["execution"]
    assert ex["status"] == "failed" and ex["exit_code"] == 1
    tail = ex["error"]["stderr_tail"]
    assert tail.endswith("xxxEND\n") and len(tail) == 4096
    assert "stderr_tail" in api.get("/openapi.json").text


@pytest.mark.parametrize("query, word", [
    ("args=abc", "args"), ("timeout=-1", "timeout"), ("timeout=soon", "timeout"),
    ("mode=later", "mode"), ("envelope=maybe", "envelope"), ("output_type=no%20way", "output_type"),
    ("node=nowhere", "nowhere"),
])
def test_invoke_rejects_bad_query(fns, query, word):
    r = fns.post(f"/v1/functions/gw-add/invoke?{query}")
    code, status = ("NOT_FOUND", 404) if query.startswith("node=") else ("INVALID_ARGUMENT", 400)
    assert_error(r, status, code, word)


def test_invoke_direct_on_a_node(fns):
    api = fns
    node = api.get("/v1/nodes").json()[1]
    # a direct call needs the function on that node: deploy it there first
    assert_error(api.post(f"/v1/functions/gw-direct/invoke?node={node['name']}"), 404, "NOT_FOUND")
    r = api.post(f"/v1/functions?node={node['node_id']}", data=msgspec.json.encode(add_spec("gw-direct")),
                 headers=JSON)
    assert r.status_code == 201, r.text
    r = api.post(f"/v1/functions/gw-direct/invoke?args=2,3&node={node['name']}")
    assert r.status_code == 200 and r.content == b"5"
    assert r.headers["x-spear-node"] == node["node_id"]
    names = {f["name"] for f in api.get(f"/v1/functions?node={node['node_id']}").json()}
    assert "gw-direct" in names
    eid = r.headers["x-spear-execution-id"]
    assert api.get(f"/v1/executions/{eid}?node={node['address']}").json()["output_text"] == "5"


def test_invoke_stream_sse_then_logs(fns):
    api = fns
    with api.post("/v1/functions/gw-hello/invoke?mode=stream", data=b"sse", stream=True) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r, None)
    kinds = [e[0] for e in events]
    assert kinds[-1] == "result" and "log" in kinds
    assert "greeting written" in "".join(e[2] for e in events if e[0] == "log")
    result = json.loads(events[-1][2])
    eid = result["execution"]["execution_id"]
    assert result["output_text"] == "hello, sse" and events[-1][1] == eid

    logs = api.get(f"/v1/executions/{eid}/logs").json()
    assert logs["captured"] and "greeting written" in logs["logs"] and logs["function"] == "gw-hello"
    text = api.get(f"/v1/executions/{eid}/logs", headers={"Accept": "text/plain"})
    assert text.headers["content-type"].startswith("text/plain") and b"greeting" in text.content
    assert "greeting written" in api.get(f"/v1/executions/{eid}").json()["logs"]
    # a failing function streams its error as the result's status
    with api.post("/v1/functions/gw-fib/invoke?mode=stream", data=b"-1", stream=True) as r:
        events = _sse(r, None)
    assert json.loads(events[-1][2])["execution"]["status"] == "failed"


# ---------------------------------------------------------------- executions


def test_async_then_get_wait_output_and_list(fns):
    api = fns
    r = api.post("/v1/functions/gw-hello/invoke?mode=async", data=b"later")
    assert r.status_code == 202
    eid = r.json()["execution_id"]
    assert r.headers["location"] == f"/v1/executions/{eid}"
    res = api.get(f"/v1/executions/{eid}?wait=10").json()
    assert res["execution"]["status"] == "succeeded" and res["output_text"] == "hello, later"
    out = api.get(f"/v1/executions/{eid}/output")
    assert out.content == b"hello, later" and out.headers["x-spear-status"] == "succeeded"
    logs = api.get(f"/v1/executions/{eid}/logs").json()
    assert logs["captured"] is False and logs["status"] == "succeeded"

    for i in range(3):
        api.post(f"/v1/functions/gw-add/invoke?args={i},0")
    page = api.get("/v1/executions?function=gw-add&limit=2").json()
    assert len(page["executions"]) == 2 and page["total"] >= 3 and page["limit"] == 2
    assert {e["function"] for e in page["executions"]} == {"gw-add"}
    nxt = api.get("/v1/executions?function=gw-add&limit=2&offset=2").json()
    assert nxt["offset"] == 2 and nxt["executions"][0]["execution_id"] not in {
        e["execution_id"] for e in page["executions"]}
    failed = api.get("/v1/executions?status=failed").json()
    assert all(e["status"] == "failed" for e in failed["executions"])
    node = page["executions"][0]["node_id"]
    on_node = api.get(f"/v1/executions?node={node}&limit=50").json()["executions"]
    assert on_node and {e["node_id"] for e in on_node} == {node}
    assert api.get("/v1/executions", headers={"Accept": MSGPACK}).headers["content-type"] == MSGPACK


@pytest.mark.parametrize("query", ["limit=0", "limit=100000", "offset=-1", "limit=ten",
                                   "status=sleeping"])
def test_list_executions_rejects_bad_query(api, query):
    assert_error(api.get(f"/v1/executions?{query}"), 400, "INVALID_ARGUMENT", query.split("=")[0])


def test_cancel_and_unknown_executions(fns):
    api = fns
    eid = api.post("/v1/functions/gw-nap/invoke?mode=async").json()["execution_id"]
    wait_for(lambda: api.get(f"/v1/executions/{eid}").json()["execution"]["status"]
             in ("scheduled", "running"), 10, "the nap to start")
    time.sleep(0.3)
    r = api.post(f"/v1/executions/{eid}/cancel")
    assert r.status_code == 202 and r.json() == {"execution_id": eid}
    res = api.get(f"/v1/executions/{eid}?wait=10").json()
    assert res["execution"]["status"] == "cancelled"
    for path in ("", "/output", "/logs"):
        assert_error(api.get(f"/v1/executions/no-such-id{path}"), 404, "NOT_FOUND")
    assert_error(api.post("/v1/executions/no-such-id/cancel"), 404, "NOT_FOUND")
    assert_error(api.get(f"/v1/executions/{eid}?wait=-1"), 400, "INVALID_ARGUMENT", "wait")
    assert_error(api.get(f"/v1/executions/{'x' * 200}"), 400, "INVALID_ARGUMENT", "execution_id")


def test_an_execution_is_named_by_any_unique_prefix(fns):
    api = fns
    a = api.post("/v1/functions/gw-hello/invoke?mode=async", data=b"one").json()["execution_id"]
    b = api.post("/v1/functions/gw-hello/invoke?mode=async", data=b"two").json()["execution_id"]
    res = api.get(f"/v1/executions/{a[:-1]}?wait=10").json()
    assert res["execution"]["execution_id"] == a and res["output_text"] == "hello, one"
    out = api.get(f"/v1/executions/{b[:-2].upper()}/output?wait=10")
    assert out.content == b"hello, two" and out.headers["x-spear-execution-id"] == b
    assert api.get(f"/v1/executions/{b[:-2]}/logs").json()["execution_id"] == b
    shared = os.path.commonprefix([a, b])
    if len(shared.replace("-", "")) >= 8:  # made within the same ~65 s, as they nearly always are
        assert_error(api.get(f"/v1/executions/{shared}"), 400, "INVALID_ARGUMENT",
                     "matches", "more characters")
    assert_error(api.get(f"/v1/executions/{a[:6]}"), 400, "INVALID_ARGUMENT", "at least 8")
    assert_error(api.get("/v1/executions/ffffffff"), 404, "NOT_FOUND")

    nap = api.post("/v1/functions/gw-nap/invoke?mode=async").json()["execution_id"]
    wait_for(lambda: api.get(f"/v1/executions/{nap}").json()["execution"]["status"]
             in ("scheduled", "running"), 10, "the nap to start")
    r = api.post(f"/v1/executions/{nap[:-4]}/cancel")
    assert r.status_code == 202 and r.json() == {"execution_id": nap}  # the whole id
    assert api.get(f"/v1/executions/{nap}?wait=10").json()["execution"]["status"] == "cancelled"


# ---------------------------------------------------------------- events


def test_events_sse_resumable(fns):
    api = fns
    eid = api.post("/v1/functions/gw-add/invoke?args=1,1").headers["x-spear-execution-id"]
    with api.get("/v1/events?since=0", stream=True, timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _sse(r, lambda evs: any(json.loads(e[2])["key"] == eid for e in evs))
    mine = [e for e in events if json.loads(e[2])["key"] == eid][0]
    assert mine[0] == "execution" and json.loads(mine[2])["state"] == "succeeded"
    assert any(e[0] == "node" for e in events)  # the spearlets' registrations are replayed
    seqs = [int(e[1]) for e in events]
    assert seqs == sorted(seqs) and all(json.loads(e[2])["seq"] == int(e[1]) for e in events)

    # resume: Last-Event-ID (what EventSource sends) or ?since= give only what came after
    cut = seqs[len(seqs) // 2]
    with api.get("/v1/events", headers={"Last-Event-ID": str(cut)}, stream=True, timeout=10) as r:
        first = _sse(r, 1)[0]
    assert int(first[1]) == cut + 1
    with api.get(f"/v1/events?since={cut}&kind=execution", stream=True, timeout=10) as r:
        first = _sse(r, 1)[0]
    assert int(first[1]) > cut and first[0] == "execution"
    # new events arrive live
    with api.get(f"/v1/events?since={seqs[-1]}", stream=True, timeout=10) as r:
        eid2 = api.post("/v1/functions/gw-add/invoke?args=2,2").headers["x-spear-execution-id"]
        live = _sse(r, lambda evs: any(json.loads(e[2])["key"] == eid2 for e in evs))
    assert live
    assert_error(api.get("/v1/events", headers={"Last-Event-ID": "abc"}), 400, "INVALID_ARGUMENT")
    assert_error(api.get("/v1/events?since=-4"), 400, "INVALID_ARGUMENT", "since")


def _sse(r: requests.Response, until) -> list[tuple[str, str, str]]:
    """Read ``(event, id, data)`` tuples from an SSE response until ``until`` is met.

    ``until``: a count, a predicate over the events read so far, or None (to the end).
    """
    if until is None:
        done = lambda evs: False  # noqa: E731
    elif isinstance(until, int):
        done = lambda evs: len(evs) >= until  # noqa: E731
    else:
        done = until
    events: list[tuple[str, str, str]] = []
    event, eid, data = "message", "", []
    deadline = time.monotonic() + 20
    for raw in r.iter_lines(chunk_size=1, decode_unicode=True):
        if time.monotonic() > deadline:
            raise AssertionError(f"SSE: condition not met; got {events[-5:]}")
        line = raw if raw is not None else ""
        if line == "":
            if data:
                events.append((event, eid, "\n".join(data)))
                if done(events):
                    return events
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            eid = value
    if until is None:
        return events
    raise AssertionError(f"SSE stream ended early; got {events[-5:]}")
