"""W3C trace context and OpenTelemetry spans: the one place Spear traces.

Every execution belongs to a W3C trace (``traceparent``/``tracestate``). A
caller may hand one in (the gateway's HTTP headers, a client argument); a
malformed one is replaced by a fresh trace, never refused. The context rides
on the wire (``Invoke`` and ``Dispatch``) and reaches the function as the
``TRACEPARENT``/``TRACESTATE`` environment variables. With no incoming
context the trace id is the execution id's 32 hex digits, so the record's
``trace_id`` is the W3C trace id and nothing is drawn at random for it.

Spans: with an OTLP endpoint configured (:func:`spear.config.otlp_traces_endpoint`)
and the ``otel`` extra installed, :class:`Tracer` sends finished spans over
OTLP/HTTP. The daemons build each span from the times their cores already
keep, with span ids they choose and carry on the wire, so a span is one
``ReadableSpan`` handed to a batch processor: no OTel context, no tracer
provider. Without an endpoint, or without the packages, the tracer is falsy
and callers skip every span call: nothing of OpenTelemetry is imported.

Span tree of one invocation through the gateway (each process emits its own)::

    spear.gateway (gateway) ─► spear.execution (SMS) ─┬► spear.admission
                                                      ├► spear.queue, spear.schedule
                                                      └► spear.dispatch ─► (Spearlet)
                                        spear.cold_start, spear.run, spear.result
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

log = logging.getLogger(__name__)

#: the version-00 traceparent; a higher version is read by its first four fields
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[\x21-\x7e]*)?\Z")
#: one tracestate list member (key=value, W3C grammar without its whitespace rules)
_MEMBER = re.compile(r"[a-z0-9][_0-9a-z\-*/@]{0,255}=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}\Z")
#: longest tracestate kept, and most members (W3C: propagate at least 512 characters, 32 members)
TRACESTATE_MAX, TRACESTATE_MEMBERS = 512, 32
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_HEX32 = re.compile(r"[0-9a-f]{32}\Z")
#: a traceparent already in the form Spear passes on
_V00 = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")
_ODD = frozenset("13579bdf")  # the last hex digit of sampled flags


def parse(traceparent: str) -> tuple[str, str, str] | None:
    """``(trace_id, parent_id, flags)`` of a valid traceparent, else None."""
    m = _TRACEPARENT.match(traceparent.strip().lower()) if traceparent else None
    if m is None:
        return None
    version, trace_id, parent_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE \
            or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags


def clean_state(tracestate: str) -> str:
    """``tracestate`` with malformed members dropped, bounded to 32 members / 512 characters."""
    if not tracestate:
        return ""
    kept: list[str] = []
    size = 0
    for member in tracestate.split(","):
        member = member.strip()
        if not member or not _MEMBER.match(member):
            continue
        size += len(member) + (1 if kept else 0)
        if size > TRACESTATE_MAX or len(kept) >= TRACESTATE_MEMBERS:
            break  # the rightmost members are the ones W3C lets us drop
        kept.append(member)
    return ",".join(kept)


def incoming(traceparent: str, tracestate: str = "") -> tuple[str, str]:
    """A caller's context made safe to pass on: ``(traceparent, tracestate)`` in
    version-00 form, or ``("", "")`` when the traceparent is missing or malformed
    (the receiver then starts a fresh trace; a tracestate alone means nothing)."""
    parsed = parse(traceparent)
    if parsed is None:
        return "", ""
    return format_parent(*parsed), clean_state(tracestate)


def format_parent(trace_id: str, span_id: str, flags: str) -> str:
    """A version-00 traceparent."""
    return f"00-{trace_id}-{span_id}-{flags}"


def new_span_id() -> str:
    """A random non-zero span id (16 hex digits)."""
    while True:
        sid = os.urandom(8).hex()
        if sid != _ZERO_SPAN:
            return sid


def sampled(traceparent: str) -> bool:
    """Whether the trace a traceparent names is recorded (its sampled flag)."""
    return traceparent[-1:] in _ODD


def root_of(execution_id: str) -> str:
    """The trace id of an execution started without a context: its id's 32 hex
    digits (a random one for an id that is not a UUID)."""
    tid = execution_id.replace("-", "")
    return tid if _HEX32.match(tid) and tid != _ZERO_TRACE else os.urandom(16).hex()


def begin(tracer: Tracer, traceparent: str, tracestate: str, trace_id: str,
          execution_id: str) -> tuple[str, str, str, str]:
    """The context of a new execution: ``(trace_id, trace, parent, tracestate)``.

    The caller's ``traceparent`` if valid; else a new trace whose id is the
    caller's ``trace_id`` when that is a W3C trace id, else the execution id's.
    ``trace``: the traceparent naming this daemon's span of the execution (a
    new span id when it is traced, else the caller's parent unchanged);
    ``parent``: the caller's span id ("" when the trace starts here);
    ``trace_id``: what the record shows (the caller's own token if any).
    """
    if not tracer:  # the common cases, passed on without recording anything
        if not traceparent and not trace_id:
            tid = root_of(execution_id)
            return tid, f"00-{tid}-{tid[16:]}-00", "", ""
        if _V00.match(traceparent) and _ZERO_TRACE not in traceparent \
                and not traceparent.endswith(_ZERO_SPAN, 0, 52):
            return (trace_id or traceparent[3:35], traceparent, traceparent[36:52],
                    clean_state(tracestate) if tracestate else "")
    parsed = parse(traceparent) if traceparent else None
    if parsed is not None:
        tid, parent, flags = parsed
        tracestate = clean_state(tracestate)
    else:
        tid = trace_id if _HEX32.match(trace_id) and trace_id != _ZERO_TRACE \
            else root_of(execution_id)
        parent, tracestate = "", ""
        flags = tracer.flags(tid)
    own = new_span_id() if tracer and flags[-1] in _ODD else parent or tid[16:]  # see sampled()
    return trace_id or tid, format_parent(tid, own, flags), parent, tracestate


def env(traceparent: str, tracestate: str) -> dict[str, str]:
    """The variables a function sees: TRACEPARENT (and TRACESTATE when there is one)."""
    if not traceparent:
        return {}
    if tracestate:
        return {"TRACEPARENT": traceparent, "TRACESTATE": tracestate}
    return {"TRACEPARENT": traceparent}


class Tracer:
    """Sends finished spans of one daemon over OTLP/HTTP; falsy when off.

    Callers test the tracer before building anything for a span, so a daemon
    without tracing allocates nothing per operation. ``service``: the OTel
    ``service.name`` (``spear-sms``, ``spear-spearlet``, ``spear-gateway``);
    ``node``: the ``spear.node`` attribute of every span it sends.
    """

    __slots__ = ("service", "node", "ratio", "_processor", "_otel")

    def __init__(self, service: str = "", *, node: str = "", sample_ratio: float = 1.0,
                 processor: Any = None) -> None:
        self.service, self.node, self.ratio = service, node, sample_ratio
        self._processor = processor
        self._otel: Any = None
        if processor is not None:
            self._otel = _OTel(service, node)

    @classmethod
    def from_config(cls, config: Any, service: str, node: str = "") -> Tracer:
        """The tracer of a daemon whose ``[tracing]`` section is ``config`` (off
        without an endpoint or without the packages)."""
        from .config import otlp_traces_endpoint

        endpoint = otlp_traces_endpoint(config)
        if not endpoint:
            return OFF
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.warning("tracing: an OTLP endpoint is set but the OpenTelemetry packages are "
                        "missing (pip install 'spear[otel]'); no spans are sent")
            return OFF
        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
        log.info("tracing: spans of %s go to %s", service, endpoint)
        return cls(service, node=node, sample_ratio=config.sample_ratio,
                   processor=processor)

    def __bool__(self) -> bool:
        return self._processor is not None

    def flags(self, trace_id: str) -> str:
        """The trace flags of a new trace: sampled ("01") for ``sample_ratio`` of them."""
        if self._processor is None:
            return "00"
        ratio = self.ratio
        if ratio >= 1.0 or int(trace_id[16:], 16) < ratio * 2.0 ** 64:
            return "01"
        return "00"

    def span(self, name: str, traceparent: str, span_id: str, start: float,
             end: float | None = None, attributes: dict | None = None, *,
             root: bool = False, kind: str = "internal", error: str = "",
             tracestate: str = "") -> None:
        """Send one finished span.

        ``traceparent`` names the trace, the parent span and the flags (a span
        is sent only when sampled); ``root``: it has no parent (the trace
        starts here). ``start``/``end``: seconds since the epoch (``end``
        None: now). ``error``: a failure message (status ERROR).
        """
        if self._processor is None or traceparent[-1:] not in _ODD:
            return
        end = time.time() if end is None else end
        try:
            self._processor.on_end(self._otel.readable(
                name, traceparent, span_id, start, max(start, end), attributes or {},
                root, kind, error, tracestate))
        except Exception:  # tracing must never fail the work it watches
            log.debug("tracing: span %s dropped", name, exc_info=True)

    def close(self) -> None:
        """Send what is buffered and stop the exporter (daemon shutdown)."""
        processor, self._processor = self._processor, None
        if processor is not None:
            try:
                processor.shutdown()
            except Exception:
                log.debug("tracing: exporter shutdown failed", exc_info=True)


class _OTel:
    """The OpenTelemetry classes a span is built from (imported only when tracing is on)."""

    def __init__(self, service: str, node: str) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.t = trace
        self.Span = ReadableSpan
        attrs = {"service.name": service or "spear"}
        if node:
            attrs["spear.node"] = node
        self.resource = Resource.create(attrs)
        self.scope = InstrumentationScope("spear")
        self.kinds = {"internal": trace.SpanKind.INTERNAL, "server": trace.SpanKind.SERVER,
                      "client": trace.SpanKind.CLIENT, "consumer": trace.SpanKind.CONSUMER}
        self.ok = trace.Status(trace.StatusCode.UNSET)

    def readable(self, name: str, traceparent: str, span_id: str, start: float, end: float,
                 attributes: dict, root: bool, kind: str, error: str, tracestate: str) -> Any:
        t = self.t
        trace_id = int(traceparent[3:35], 16)
        flags = t.TraceFlags(int(traceparent[53:55], 16))
        state = t.TraceState.from_header([tracestate]) if tracestate else None
        ctx = t.SpanContext(trace_id, int(span_id, 16), False, flags, state)
        parent = None if root else t.SpanContext(trace_id, int(traceparent[36:52], 16), True,
                                                 flags, state)
        status = t.Status(t.StatusCode.ERROR, error) if error else self.ok
        return self.Span(name, ctx, parent, self.resource, attributes, kind=self.kinds[kind],
                         status=status, start_time=int(start * 1e9), end_time=int(end * 1e9),
                         instrumentation_scope=self.scope)


#: the tracer of a daemon that sends no spans
OFF = Tracer()
