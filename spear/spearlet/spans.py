"""The node's spans of an execution: cold start, run and result.

Built once the execution ended, from the durations the runner measured
(:class:`spear.spearlet.events.Finished`), so nothing is kept per stage while
it runs. Their parent is the span the context names (the SMS's dispatch span,
or a direct caller's); a direct invocation that starts its trace here gets a
``spear.execution`` span as the root of the three. The run span's id is the
one the function saw in TRACEPARENT, so the function's own spans hang below it.
"""

from __future__ import annotations

from ..tracing import Tracer, new_span_id
from .events import Finished


def finished(tracer: Tracer, trace: str, parent: str, execution_id: str, function: str,
             node: str, ev: Finished, submitted_at: float, now: float) -> None:
    """Send the spans of an execution that ended (``trace``/``parent``: its context)."""
    attrs = {"spear.execution_id": execution_id, "spear.function": function, "spear.node": node}
    if parent:
        up = f"{trace[:36]}{parent}{trace[52:]}"
    else:  # the trace starts here: one root span holds the stages
        root = trace[19:35]
        tracer.span("spear.execution", trace, root, submitted_at, now,
                    dict(attrs, **{"spear.status": ev.status}), root=True, kind="server")
        up = f"{trace[:36]}{root}{trace[52:]}"
    start = submitted_at + ev.queue
    if ev.cold > 0:
        tracer.span("spear.cold_start", up, new_span_id(), start, start + ev.cold, attrs)
    start += ev.cold
    end = start + ev.run
    err = ev.error.message if ev.error is not None and ev.status != "succeeded" else ""
    tracer.span("spear.run", up, trace[36:52], start, end,
                dict(attrs, **{"spear.status": ev.status}), error=err)
    tracer.span("spear.result", up, new_span_id(), end, max(end, now), attrs)
