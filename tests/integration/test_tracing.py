"""W3C trace context and OpenTelemetry spans across gateway, SMS and Spearlet.

The daemons export over their real OTLP/HTTP exporter to a small receiver in
the test (protobuf decoded with opentelemetry-proto), so one invocation's spans
are seen as a collector would see them, from three processes.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import urllib.request

import pytest

from spear import Client, protocol as P, tracing
from spear.cluster import Cluster, free_port
from tests.helpers import EXAMPLES, FAST_HB, make_bundle, wait_for

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
ENV_APP = make_bundle({"app.py": (
    "import json, os\n"
    "def handle(data, *args):\n"
    "    return json.dumps({k: os.environ.get(k, '') for k in ('TRACEPARENT', 'TRACESTATE')}).encode()\n")})


class Receiver:
    """An OTLP/HTTP traces endpoint collecting every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        spans = self.spans

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                req = ExportTraceServiceRequest.FromString(body)
                for rs in req.resource_spans:
                    service = next((a.value.string_value for a in rs.resource.attributes
                                    if a.key == "service.name"), "")
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            spans.append({
                                "name": s.name, "service": service, "trace": s.trace_id.hex(),
                                "id": s.span_id.hex(), "parent": s.parent_span_id.hex(),
                                "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                                "attrs": {a.key: a.value.string_value or a.value.int_value
                                          for a in s.attributes}})
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, trace_id: str) -> list[dict]:
        return [s for s in self.spans if s["trace"] == trace_id]


@pytest.fixture(scope="module")
def otlp():
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def traced(tmp_path_factory, otlp):
    """SMS + 1 Spearlet + gateway, all exporting spans to ``otlp`` every 0.1 s."""
    port = free_port()
    c = Cluster(tmp_path_factory.mktemp("otel"), spearlets=1, store="memory",
                gateway=f"127.0.0.1:{port}", host_roots=[str(EXAMPLES)],
                env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_BSP_SCHEDULE_DELAY": "100"},
                **FAST_HB)
    c.start(wait=30)
    try:
        with Client(c.sms_addr) as client:
            for name in ("tp-py", "tp-py-gw"):  # tp-py-gw: its first call is the gateway test's
                client.deploy(P.FunctionSpec(name=name, runtime="process", handler="app:handle",
                                             artifact=ENV_APP))
            client.deploy(P.FunctionSpec(name="tp-sh", runtime="process", mode="oneshot",
                                         command=["sh", "-c", 'printf "%s" "$TRACEPARENT"']))
            client.deploy(P.FunctionSpec(name="tp-wasm", runtime="wasm",
                                         artifact=(EXAMPLES / "tests" / "env.wat").read_bytes()))
        yield c, f"http://127.0.0.1:{port}"
    finally:
        c.stop()


def post(url: str, headers: dict) -> tuple[bytes, dict]:
    req = urllib.request.Request(url, data=b"", method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read(), dict(r.headers)


def test_one_invoke_through_the_gateway_is_one_connected_trace(traced, otlp):
    _, gw = traced
    out, headers = post(f"{gw}/v1/functions/tp-py-gw/invoke",
                        {"traceparent": TRACEPARENT, "tracestate": "spear=1,other=x"})
    seen = json.loads(out)
    assert seen["TRACEPARENT"].startswith(f"00-{TRACE}-") and seen["TRACEPARENT"].endswith("-01")
    assert seen["TRACESTATE"] == "spear=1,other=x"
    assert headers["x-spear-trace-id"] == TRACE
    eid = headers["x-spear-execution-id"]
    stages = {"spear.gateway", "spear.execution", "spear.admission", "spear.queue",
              "spear.schedule", "spear.dispatch", "spear.cold_start", "spear.run", "spear.result"}
    wait_for(lambda: stages <= {s["name"] for s in otlp.of(TRACE)}, 15, "every stage's span")
    spans = {s["name"]: s for s in otlp.of(TRACE)}
    by_id = {s["id"]: s for s in otlp.of(TRACE)}

    def parent(name: str) -> str:
        return by_id[spans[name]["parent"]]["name"]

    assert spans["spear.gateway"]["parent"] == PARENT  # the caller's span
    assert spans["spear.gateway"]["service"] == "spear-gateway"
    assert parent("spear.execution") == "spear.gateway"
    for name in ("spear.admission", "spear.queue", "spear.schedule", "spear.dispatch"):
        assert parent(name) == "spear.execution" and spans[name]["service"] == "spear-sms"
    for name in ("spear.cold_start", "spear.run", "spear.result"):
        assert parent(name) == "spear.dispatch" and spans[name]["service"] == "spear-spearlet"
    # the function's TRACEPARENT names the run span: its own spans hang below it
    assert seen["TRACEPARENT"].split("-")[2] == spans["spear.run"]["id"]
    for name in ("spear.execution", "spear.run", "spear.dispatch"):
        assert spans[name]["attrs"]["spear.execution_id"] == eid
        assert spans[name]["attrs"]["spear.function"] == "tp-py-gw"
    assert spans["spear.run"]["attrs"]["spear.node"] == spans["spear.dispatch"]["attrs"]["spear.node"] != ""


@pytest.mark.parametrize("bad", ["garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
                                 "ff-" + TRACE + "-00f067aa0ba902b7-01",
                                 "00-" + TRACE.upper() + "x-00f067aa0ba902b7-01"])
def test_a_malformed_traceparent_header_starts_a_new_trace(traced, bad):
    _, gw = traced
    out, headers = post(f"{gw}/v1/functions/tp-sh/invoke", {"traceparent": bad})
    parsed = tracing.parse(out.decode())
    assert parsed is not None and parsed[0] != TRACE
    assert headers["x-spear-trace-id"] == parsed[0]


@pytest.mark.parametrize("fn", ["tp-sh", "tp-wasm", "tp-py"])
def test_every_runtime_gives_the_function_traceparent(traced, fn):
    c, _ = traced
    tp = f"00-{TRACE}-{PARENT}-00"  # not sampled: passed on, no spans
    with Client(c.sms_addr) as client:
        r = client.invoke(fn, traceparent=tp, tracestate="k=v")
        r.raise_for_status()
    text = r.output.decode(errors="replace")
    assert f"00-{TRACE}-" in text and r.info.trace_id == TRACE
    if fn != "tp-sh":
        assert "k=v" in text


def test_a_client_without_context_gets_a_trace_named_by_its_execution(traced):
    c, _ = traced
    with Client(c.sms_addr) as client:
        r = client.invoke("tp-sh", traceparent="not-a-traceparent")
    assert r.info.trace_id == r.execution_id.replace("-", "")
    assert r.output.decode().split("-")[1] == r.info.trace_id


def test_without_an_endpoint_no_daemon_imports_opentelemetry():
    code = ("import sys\n"
            "from spear.config import load_config\n"
            "from spear.tracing import Tracer\n"
            "import spear.sms.daemon, spear.spearlet.daemon, spear.gateway.app, spear.client\n"
            "cfg = load_config(env={})\n"
            "assert not Tracer.from_config(cfg.tracing, 'x')\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_direct_invoke_on_a_node_without_context_is_a_trace_of_its_own(traced, otlp):
    c, _ = traced
    with Client(c.sms_addr) as client:
        r = client.invoke("tp-sh", node=c.spearlet_addrs[0])
    r.raise_for_status()
    tid = r.info.trace_id
    assert r.output.decode().split("-")[1] == tid
    wait_for(lambda: {"spear.execution", "spear.run", "spear.result"}
             <= {s["name"] for s in otlp.of(tid)}, 15, "the node's spans")
    spans = {s["name"]: s for s in otlp.of(tid)}
    assert spans["spear.execution"]["parent"] == "" and spans["spear.execution"]["service"] == "spear-spearlet"
    assert spans["spear.run"]["parent"] == spans["spear.execution"]["id"]
    assert r.output.decode().split("-")[2] == spans["spear.run"]["id"]
