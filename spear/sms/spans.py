"""The SMS's part of an execution's trace: its context and the spans of its stages.

Part of the SMS core (no I/O of its own: spans go to the injected
:class:`spear.tracing.Tracer`, which is falsy when tracing is off, and then
nothing here allocates beyond the context every execution carries). An
execution's ``trace`` is the traceparent naming its ``spear.execution`` span
(or, tracing off, the caller's context unchanged); each attempt on a node has
a ``spear.dispatch`` span, the parent the node's spans name.
"""

from __future__ import annotations

from .. import tracing
from ..tracing import Tracer
from .records import Exec


def _attrs(ex: Exec, node: str = "") -> dict:
    i = ex.info
    return {"spear.execution_id": i.execution_id, "spear.function": i.function,
            "spear.node": node or i.node_id}


def admitted(tracer: Tracer, ex: Exec, now: float) -> None:
    """The ``spear.admission`` span: the SMS accepted the submission."""
    tracer.span("spear.admission", ex.trace, tracing.new_span_id(), now, None, _attrs(ex))


def dispatching(tracer: Tracer, ex: Exec, node: str, since: float, now: float) -> str:
    """The traceparent a Dispatch of ``ex`` to ``node`` carries; with tracing on,
    the ``spear.queue`` (from ``since``) and ``spear.schedule`` spans too, and a
    new ``spear.dispatch`` span id (sent when the attempt ends: :func:`attempt_ended`)."""
    if not tracer or not tracing.sampled(ex.trace):
        return ex.trace
    attrs = _attrs(ex, node)
    tracer.span("spear.queue", ex.trace, tracing.new_span_id(), since, now, attrs)
    tracer.span("spear.schedule", ex.trace, tracing.new_span_id(), now, None, attrs)
    ex.span = tracing.new_span_id()
    t = ex.trace
    return f"{t[:36]}{ex.span}{t[52:]}"


def attempt_ended(tracer: Tracer, ex: Exec, node: str) -> None:
    """The ``spear.dispatch`` span of the attempt on ``node`` that just ended."""
    tracer.span("spear.dispatch", ex.trace, ex.span, ex.dispatched_at, None,
                _attrs(ex, node), kind="client")
    ex.span = ""


def ended(tracer: Tracer, ex: Exec, now: float) -> None:
    """The ``spear.execution`` span: from submission to the terminal state."""
    i = ex.info
    t = ex.trace
    parent = f"{t[:36]}{ex.parent}{t[52:]}" if ex.parent else t
    attrs = _attrs(ex)
    attrs["spear.status"] = i.status
    attrs["spear.attempts"] = i.attempts
    tracer.span("spear.execution", parent, t[36:52], i.submitted_at, now, attrs,
                root=not ex.parent, kind="server", tracestate=ex.tracestate,
                error=i.error.message if i.error is not None and i.status != "succeeded" else "")
