"""The gateway's pieces without a cluster: figures, parsing, views, the document."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import msgspec
import pytest

from spear import errors, protocol as P
from spear.cluster import free_port
from spear.config import Config, load_config
from spear.gateway import models as M, openapi
from spear.gateway.http import (STATUS_OF_CODE, HTTPError, parse_multipart, parse_query, sse)
from spear.gateway.live import LogStore, Reading, make_sample
from spear.gateway.live import LogTail
from spear.gateway.settings import from_config, parse_listen


def _info(eid, status="succeeded", sub=100.0, fin=100.01, cold=False):
    return P.ExecutionInfo(execution_id=eid, function="f", status=status, submitted_at=sub,
                           finished_at=fin, cold=cold)


def _stats(**counts):
    return P.StatsReply(id=1, nodes_ready=2, cores_total=4.0, memory_total=1, cores_reserved=1.0,
                        memory_reserved=0, executions_active=3, counts=counts)


# ---------------------------------------------------------------- live figures


def test_sample_rates_latency_and_hit_rate():
    first = Reading(100.0, _stats(succeeded=10, failed=1), [])
    s0 = make_sample(None, first)
    assert s0.invocations_per_s == 0 and s0.latency_p50_ms is None and s0.nodes_ready == 2
    recent = [_info("a", fin=101.0, sub=100.99), _info("b", fin=101.5, sub=101.48, cold=True),
              _info("c", status="failed", fin=101.6, sub=101.5), _info("old", fin=99.0),
              _info("run", status="running", fin=0.0)]
    cur = Reading(102.0, _stats(succeeded=14, failed=2, timed_out=1, submitted=99), recent)
    s = make_sample(first, cur)
    assert s.invocations_per_s == pytest.approx((17 - 11) / 2.0)
    assert s.failures_per_s == pytest.approx(1.0)
    assert s.latency_p50_ms == pytest.approx(20.0, rel=1e-3)  # of 10, 20 and 100 ms
    assert s.latency_p95_ms == pytest.approx(100.0, rel=1e-3)
    assert s.pool_hit_rate == 0.5  # a warm and a cold success; the failure is not counted
    # an SMS restart resets its counters: never a negative rate
    assert make_sample(cur, Reading(104.0, _stats(succeeded=1), [])).invocations_per_s == 0


def test_log_store_is_bounded():
    logs = LogStore(max_executions=2, max_bytes=8)
    logs.put("a", [b"1234", b"5678", b"9"])
    assert logs.get("a") == (b"23456789", True)
    logs.put("b", [b"x"])
    logs.put("c", [b"y"])
    assert logs.get("a") is None and logs.get("c") == (b"y", False)


# ---------------------------------------------------------------- parsing


def test_parse_query_types_lists_and_errors():
    q = parse_query({"args": ["1,2.5", "3"], "timeout": ["2"], "envelope": ["true"]}, M.InvokeQuery)
    assert q.args == [1, 2.5, 3] and q.timeout == 2.0 and q.envelope is True and q.mode == "sync"
    assert parse_query({"unknown": ["x"]}, M.NodesQuery).state is None
    for bad, word in [({"limit": ["x"]}, "`limit`"), ({"limit": ["0"]}, "`limit`"),
                      ({"status": ["null"]}, "`status`"), ({"offset": ["-1"]}, "`offset`")]:
        with pytest.raises(HTTPError) as e:
            parse_query(bad, M.ExecutionsQuery)
        assert e.value.status == 400 and word in e.value.message


def test_parse_multipart():
    body = (b"--B\r\nContent-Disposition: form-data; name=\"spec\"\r\nContent-Type: application/json\r\n"
            b"\r\n{}\r\n--B\r\nContent-Disposition: form-data; name=\"artifact\"; filename=\"a b.wasm\"\r\n"
            b"\r\n\x00\r\n\x01\r\n--B--\r\n")
    parts = parse_multipart(body, 'multipart/form-data; boundary="B"')
    assert parts["spec"].data == b"{}" and parts["spec"].content_type == "application/json"
    assert parts["artifact"].data == b"\x00\r\n\x01" and parts["artifact"].filename == "a b.wasm"
    for bad, ctype in [(body, "multipart/form-data"), (b"--B\r\n", "multipart/form-data; boundary=B"),
                       (b"--B\r\nX: y\r\n\r\nz\r\n--B--", "multipart/form-data; boundary=B")]:
        with pytest.raises(HTTPError):
            parse_multipart(bad, ctype)


def test_sse_framing():
    assert sse("log", b"a\nb\r\nc", id=7) == b"event: log\nid: 7\ndata: a\ndata: b\ndata: c\n\n"


def test_every_wire_code_has_a_status():
    assert set(errors.CODES) <= set(STATUS_OF_CODE)
    assert HTTPError.of(errors.NotFound("x")).status == 404
    assert HTTPError.of(errors.FunctionError("x")).status == 502


# ---------------------------------------------------------------- types and document


def test_views_mirror_the_wire_messages():
    wire = {f.name for f in msgspec.structs.fields(P.StatsReply)} - {"id"}
    assert set(M.Stats.__struct_fields__) == wire
    ev = P.Event(id=9, seq=3, kind="node", key="n", state="ready", ts=1.0)
    view = M.to_view(M.EventView, ev)
    assert json.loads(msgspec.json.encode(view)) == {"seq": 3, "kind": "node", "key": "n",
                                                      "state": "ready", "ts": 1.0, "detail": ""}


def test_openapi_document_is_valid_and_complete():
    jsonschema = pytest.importorskip("jsonschema")
    doc = openapi.build(bearer=True)
    ids = [op["operationId"] for path in doc["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    # every $ref resolves
    refs = set()

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                refs.add(node["$ref"].rsplit("/", 1)[-1])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(doc)
    assert refs <= set(doc["components"]["schemas"])
    # the components are valid JSON Schema 2020-12, and accept what the API sends
    schemas = doc["components"]["schemas"]
    root = {"$defs": schemas, **{"$ref": "#/$defs/FunctionSpec"}}
    text = json.dumps(root).replace("#/components/schemas/", "#/$defs/")
    validator = jsonschema.Draft202012Validator(json.loads(text))
    spec = P.FunctionSpec(name="a", runtime="wasm", artifact=b"\0", limits=P.Limits(timeout=2.0))
    validator.validate(json.loads(msgspec.json.encode(spec)))
    assert list(validator.iter_errors({"name": 5}))


# ---------------------------------------------------------------- settings and serving


def test_settings():
    assert parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_listen(":7780") == ("127.0.0.1", 7780)
    assert parse_listen("[::1]:9") == ("::1", 9)
    with pytest.raises(errors.ConfigError):
        parse_listen("host:port")
    s = from_config(Config(), sms="tcp://10.0.0.1:7700", http="127.0.0.1:1",
                    overrides={"max_body": 4096, "invoke_timeout": None})
    assert (s.sms, s.port, s.gateway.max_body, s.gateway.invoke_timeout) == (
        "tcp://10.0.0.1:7700", 1, 4096, 300.0)
    with pytest.raises(errors.ConfigError):
        from_config(Config(), overrides={"max_body": 1})
    assert from_config(load_config(env={})).sms == "tcp://127.0.0.1:7700"


def test_gateway_thread_without_an_sms():
    """In-process serving: the pages work and /healthz says the SMS is missing."""
    from spear.gateway import GatewayThread

    s = from_config(Config(), sms=f"tcp://127.0.0.1:{free_port()}", http="127.0.0.1:0")
    with GatewayThread(s) as g:
        with urllib.request.urlopen(g.url + "/openapi.json", timeout=5) as r:
            assert json.load(r)["openapi"] == "3.1.0"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(g.url + "/healthz", timeout=5)
        assert e.value.code == 503 and json.load(e.value)["sms_reachable"] is False
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(g.url + "/v1/nodes?state=bogus", timeout=5)
        assert e.value.code == 400


def test_gateway_log_tails_are_bounded():
    t = LogTail(1000)
    for _ in range(10_000):
        t.append(b"x" * 100)
    assert t.size <= 1000 and b"".join(t) == b"x" * t.size and len(t) == 10
