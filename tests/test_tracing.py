"""spear.tracing: W3C trace context checks, and the spans the SMS and Spearlet cores send.

The cores get a recording tracer (a Tracer whose processor keeps what it is
handed), so parent links are checked without daemons; the same spans over the
real exporter, across processes: tests/integration/test_tracing.py.
"""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from spear import protocol as P, tracing  # noqa: E402
from spear.config import TracingConfig, otlp_traces_endpoint  # noqa: E402
from spear.tracing import Tracer  # noqa: E402
from tests.sms.test_core import Harness, dispatch  # noqa: E402

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TP = f"00-{TRACE}-{PARENT}-01"


class Kept:
    """A span processor that keeps the spans it is handed."""

    def __init__(self) -> None:
        self.spans: list = []

    def on_end(self, span) -> None:
        self.spans.append(span)

    def shutdown(self) -> None:
        pass

    def named(self) -> dict:
        return {s.name: s for s in self.spans}


def recording(sample_ratio: float = 1.0) -> tuple[Tracer, Kept]:
    kept = Kept()
    return Tracer("test", node="n", sample_ratio=sample_ratio, processor=kept), kept


# ---------------------------------------------------------------- the W3C context


@pytest.mark.parametrize("good, expect", [
    (TP, (TRACE, PARENT, "01")),
    (TP.upper(), (TRACE, PARENT, "01")),                     # read case-insensitively
    (f"01-{TRACE}-{PARENT}-00-future", (TRACE, PARENT, "00")),  # a later version's first fields
])
def test_valid_traceparents_parse(good, expect):
    assert tracing.parse(good) == expect


@pytest.mark.parametrize("bad", [
    "", "garbage", f"00-{TRACE}-{PARENT}-01-extra", f"ff-{TRACE}-{PARENT}-01",
    f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE[:-1]}-{PARENT}-01",
    f"00-{TRACE}-{PARENT}-1", f"00-{TRACE}-{PARENT}-01\r\nx: y"])
def test_malformed_traceparents_are_dropped_with_their_state(bad):
    assert tracing.parse(bad) is None
    assert tracing.incoming(bad, "a=b") == ("", "")


def test_tracestate_is_bounded_and_cleaned():
    assert tracing.clean_state(" a=1 , bad member,b=2,,c=3") == "a=1,b=2,c=3"
    many = ",".join(f"k{i}=v" for i in range(40))
    assert tracing.clean_state(many).count(",") == 31  # 32 members at most
    long = ",".join(f"k{i}={'x' * 100}" for i in range(10))
    assert len(tracing.clean_state(long)) <= tracing.TRACESTATE_MAX


def test_begin_without_a_context_uses_the_execution_id_and_sends_nothing_when_off():
    eid = "0190f3a2-7b1c-7d2e-8f3a-4b5c6d7e8f90"
    trace_id, trace, parent, state = tracing.begin(tracing.OFF, "", "", "", eid)
    assert trace_id == eid.replace("-", "") and parent == "" and state == ""
    assert trace == f"00-{trace_id}-{trace_id[16:]}-00"
    # a caller's own token stays the record's trace id; a W3C one names the trace
    assert tracing.begin(tracing.OFF, "", "", "job-7", eid)[0] == "job-7"
    assert tracing.begin(tracing.OFF, "", "", TRACE, eid)[1].startswith(f"00-{TRACE}-")
    # with a context and tracing off, it is passed on unchanged
    assert tracing.begin(tracing.OFF, TP, "a=b", "", eid) == (TRACE, TP, PARENT, "a=b")


def test_sample_ratio_decides_new_traces_only():
    tracer, kept = recording(sample_ratio=0.0)
    assert tracer.flags(TRACE) == "00"
    _, trace, _, _ = tracing.begin(tracer, TP, "", "", "e")  # the caller's flag decides
    assert trace.endswith("-01")
    tracer.span("s", f"00-{TRACE}-{PARENT}-00", tracing.new_span_id(), 1.0, 2.0)
    assert kept.spans == []  # unsampled: not recorded


def test_the_endpoint_comes_from_the_key_or_the_standard_variables():
    assert otlp_traces_endpoint(TracingConfig(), {}) == ""
    assert otlp_traces_endpoint(TracingConfig(otlp_endpoint="http://c:4318/"), {}) \
        == "http://c:4318/v1/traces"
    assert otlp_traces_endpoint(TracingConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://e:1"}) \
        == "http://e:1/v1/traces"
    assert otlp_traces_endpoint(TracingConfig(), {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://e:1",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:2/x"}) == "http://t:2/x"
    assert otlp_traces_endpoint(TracingConfig(enabled=False, otlp_endpoint="http://c:4318"), {}) == ""


# ---------------------------------------------------------------- the SMS core's spans


def _ids(span) -> tuple[str, str]:
    parent = span.parent.span_id if span.parent is not None else 0
    return f"{span.context.span_id:016x}", f"{parent:016x}" if parent else ""


def test_the_sms_spans_of_an_execution_hang_below_the_callers_span():
    h = Harness()
    tracer, kept = recording()
    h.core.tasks.tracer = tracer
    h.register("n1")
    h.deploy("f")
    node, d = dispatch(h.invoke("sync", traceparent=TP, tracestate="a=b"))
    ex_span = h.core.tasks.execs[d.execution_id].trace[36:52]
    # the Dispatch names the dispatch span: the node's spans hang below it
    assert d.traceparent.startswith(f"00-{TRACE}-") and d.traceparent.endswith("-01")
    assert d.tracestate == "a=b" and d.traceparent[36:52] != ex_span
    h.send(P.Result(id=d.id, execution=P.ExecutionInfo(
        execution_id=d.execution_id, function="f", status="succeeded")), ident=node)
    spans = kept.named()
    assert set(spans) == {"spear.execution", "spear.admission", "spear.queue", "spear.schedule",
                          "spear.dispatch"}
    assert _ids(spans["spear.execution"]) == (ex_span, PARENT)
    for name in ("spear.admission", "spear.queue", "spear.schedule", "spear.dispatch"):
        assert _ids(spans[name])[1] == ex_span
        assert spans[name].attributes["spear.execution_id"] == d.execution_id
        assert f"{spans[name].context.trace_id:032x}" == TRACE
    assert _ids(spans["spear.dispatch"])[0] == d.traceparent[36:52]
    assert spans["spear.dispatch"].attributes["spear.node"] == "n1"
    assert spans["spear.schedule"].attributes["spear.node"] == "n1"


def test_an_execution_without_a_context_is_the_root_of_its_own_trace():
    h = Harness()
    tracer, kept = recording()
    h.core.tasks.tracer = tracer
    h.register("n1")
    h.deploy("f")
    node, d = dispatch(h.invoke("sync"))
    h.send(P.Result(id=d.id, execution=P.ExecutionInfo(
        execution_id=d.execution_id, function="f", status="failed",
        error=P.ErrorInfo(code="FUNCTION_ERROR", message="boom"))), ident=node)
    root = kept.named()["spear.execution"]
    assert root.parent is None and root.status.description == "boom"
    assert f"{root.context.trace_id:032x}" == d.execution_id.replace("-", "")


def test_with_tracing_off_the_dispatch_carries_the_callers_context_unchanged():
    h = Harness()
    h.register("n1")
    h.deploy("f")
    _, d = dispatch(h.invoke("sync", traceparent=TP))
    assert d.traceparent == TP
    _, d = dispatch(h.invoke("sync", traceparent="bogus"))
    tid = d.execution_id.replace("-", "")
    assert d.traceparent == f"00-{tid}-{tid[16:]}-00"


def test_an_execution_id_that_is_no_uuid_still_gets_a_valid_trace():
    trace_id, trace, _, _ = tracing.begin(tracing.OFF, "", "", "", "e-1")
    assert tracing.parse(trace) is not None and trace[3:35] == trace_id
