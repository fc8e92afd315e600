"""SpearletCore: the state and rules of one execution node, without I/O.

``SpearletCore.handle(event, now) -> list[instruction]`` (the vocabulary is
:mod:`spear.spearlet.events`); the driver (:mod:`spear.spearlet.runner` and
the daemon) feeds it and carries out what it answers: reply to a client,
send to the SMS, start or cancel an execution, fetch a function, remove
one, send a heartbeat, register again. No sockets, no asyncio, no clock
(``now`` is wall-clock seconds, given), no runtime calls.

The rules live here once: :meth:`SpearletCore.admit` decides every
execution, from a client or from the SMS; :meth:`SpearletCore.check_limits`
holds a spec or a timeout to the node's maxima; :meth:`SpearletCore._finish`
accounts every ended execution (counts, metrics, its record, its answer).
Results of SMS executions are kept (:class:`ResultBuffer`) until a
heartbeat's ack confirms them.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import msgspec

from .. import errors, protocol as P, specs, tracing
from ..config import Config
from ..ids import is_prefix, new_id
from ..tracing import Tracer
from . import spans
from .events import (Asked, Cancel, CancelAsked, Deployed, Dispatched, Drain, Ensure, Ensured,
                     Finished, HeartbeatAcked, HeartbeatDue, Invoked, Logged, Remove, RemoveAsked,
                     Reply, Reregister, SendHeartbeat, Start, ToSMS, Wait, Welcomed)
from .results import ResultBuffer

log = logging.getLogger("spear.functions")

#: an ended execution's output is kept with its record up to this size once it
#: was delivered (to the SMS, or to the client that waited); bigger ones go, as
#: in the SMS, so the records a node keeps cannot hold its memory
KEEP_OUTPUT = 64 * 1024
#: bytes of big outputs not yet read (direct async executions) kept in all;
#: beyond it the oldest are dropped
KEEP_UNREAD_BYTES = 256 << 20

# ---------------------------------------------------------------- state


class Maxima(msgspec.Struct, frozen=True):
    """The largest limits this node grants (``None``: no bound)."""

    memory_mb: int | None = None
    timeout: float | None = None
    cpus: float | None = None
    output_mb: int | None = None

    @classmethod
    def from_config(cls, config: Config) -> Maxima:
        """``[spearlet] max_*`` and ``[runtimes.process] max_output_mb``."""
        c = config.spearlet
        return cls(c.max_memory_mb, c.max_timeout, c.max_cpus,
                   config.runtimes.process.max_output_mb)


class Function(msgspec.Struct):
    """A function deployed on this node, as the core knows it."""

    spec: P.FunctionSpec
    digest: str
    sms_digest: str = ""
    invocations: int = 0


class Execution(msgspec.Struct, gc=False):
    """One execution on this node.

    ``ident`` is the direct client to answer (None: the SMS); ``rid`` the id
    its answers carry; ``mode`` the Invoke mode, or ``sms``. ``inline``: it
    may be answered at once (see :class:`Start`). ``pending`` holds the
    input of a dispatch while its function is fetched. ``info`` is the
    terminal ExecutionInfo, made once when it ends (until then
    :meth:`SpearletCore.info` describes it from the fields here).
    """

    execution_id: str
    function: str
    trace_id: str
    submitted_at: float
    ident: bytes | None
    rid: int
    mode: str
    status: str = "pending"
    runtime: str = ""
    info: P.ExecutionInfo | None = None
    output: bytes = b""
    done: bool = False
    inline: bool = False
    seq: int = 0
    pending: tuple | None = None
    #: W3C context (:func:`spear.tracing.begin`): the traceparent the function
    #: sees, the caller's span id ("": the trace starts here), the tracestate
    trace: str = ""
    parent: str = ""
    tracestate: str = ""


class SpearletCore:
    """Deployed functions, executions, admission and accounting of one node."""

    def __init__(self, node_id: str, *, max_concurrency: int = 64,
                 maxima: Maxima | None = None, keep_executions: int = 10_000,
                 metrics: Any = None) -> None:
        self.node_id = node_id
        self.max_concurrency = max_concurrency
        self.maxima = maxima or Maxima()
        self.keep_executions = keep_executions
        #: SpearletMetrics (in-memory counters), or None
        self.metrics = metrics
        self.functions: dict[str, Function] = {}
        self.executions: collections.OrderedDict[str, Execution] = collections.OrderedDict()
        self.running = 0
        self.draining = False
        self.counts: dict[str, int] = {}  # ended executions by status
        self.dispatched: set[str] = set()  # SMS executions on this node, not yet ended
        self.results = ResultBuffer()  # SMS results sent, not yet confirmed
        #: where spans go (the daemon sets it; off in tests of the core)
        self.tracer: Tracer = tracing.OFF
        #: direct async executions whose big output nobody has read yet, oldest first
        self.unread: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.unread_bytes = 0
        self.session = 0
        self._handlers = {
            Invoked: self._on_invoked, Dispatched: self._on_dispatched,
            Ensured: self._on_ensured, Finished: self._finish, Logged: self._on_logged,
            CancelAsked: self._on_cancel, Asked: self._on_asked, Deployed: self._on_deployed,
            RemoveAsked: self._on_remove, Welcomed: self._on_welcomed,
            HeartbeatDue: self._on_heartbeat_due, HeartbeatAcked: self._on_heartbeat_acked,
            Drain: self._on_drain,
        }

    def handle(self, event: Any, now: float) -> list:
        """Apply one event; return the instructions for the driver, in order."""
        return self._handlers[type(event)](event, now)

    def info(self, execution_id: str) -> P.ExecutionInfo:
        """What this node knows of an execution, named by its id or a unique
        prefix (NOT_FOUND if nothing)."""
        return self._info(self._lookup(execution_id))

    def _lookup(self, eid: str) -> Execution:
        """The execution ``eid`` names: the one place a client's id is resolved.

        A node takes whole ids only. Nobody can list the executions clients ran
        directly on a node, so an id there is the capability to read or cancel
        its execution; accepting prefixes (whose first 8 digits are a ~65 s
        time window) would let anyone who can reach the node find them. The
        SMS, which lists every execution to the roles that may read one,
        accepts unique prefixes. NOT_FOUND, or INVALID_ARGUMENT for a prefix.
        """
        ex = self.executions.get(eid)
        if ex is None:
            if is_prefix(eid):
                raise errors.InvalidArgument(
                    f"execution id {eid!r}: a node takes whole execution ids (ask the SMS, "
                    "without --node, to find one by its prefix)")
            raise self._not_found(eid)
        return ex

    def _info(self, ex: Execution) -> P.ExecutionInfo:
        if ex.info is not None:
            return ex.info
        return P.ExecutionInfo(execution_id=ex.execution_id, function=ex.function,
                               status=ex.status, node_id=self.node_id, trace_id=ex.trace_id,
                               submitted_at=ex.submitted_at)

    # ------------------------------------------------------------ rules

    def check_limits(self, limits: P.Limits, timeout: float | None = None) -> None:
        """Refuse limits above this node's maxima (INVALID_ARGUMENT names the field)."""
        mx = self.maxima
        if mx.memory_mb is not None and limits.memory_mb is not None \
                and limits.memory_mb > mx.memory_mb:
            raise errors.InvalidArgument(f"limits.memory_mb = {limits.memory_mb} exceeds this "
                                         f"node's maximum of {mx.memory_mb}")
        if mx.timeout is not None:
            for name, value in (("limits.timeout", limits.timeout), ("timeout", timeout)):
                if value is not None and value > mx.timeout:
                    raise errors.InvalidArgument(f"{name} = {value:g} exceeds this node's "
                                                 f"maximum of {mx.timeout:g}s")
        if mx.cpus is not None and limits.cpus is not None and limits.cpus > mx.cpus:
            raise errors.InvalidArgument(f"limits.cpus = {limits.cpus:g} exceeds this node's "
                                         f"maximum of {mx.cpus:g}")
        cap = mx.output_mb
        if limits.max_output_mb is not None and cap is not None and limits.max_output_mb > cap:
            raise errors.InvalidArgument(f"limits.max_output_mb = {limits.max_output_mb} exceeds "
                                         f"this node's maximum of {cap} ([runtimes.process] "
                                         f"max_output_mb)")

    def check_spec(self, spec: P.FunctionSpec) -> None:
        """Refuse a spec this node will not deploy (from a client or fetched from the SMS)."""
        self.check_limits(spec.limits)
        specs.check(spec)
        if spec.pool.min_warm > spec.pool.max:
            raise errors.InvalidArgument(
                f"pool.min_warm ({spec.pool.min_warm}) exceeds pool.max ({spec.pool.max})")

    def admit(self, function: str, timeout: float | None, *, direct: bool,
              execution_id: str = "") -> errors.SpearError | None:
        """Whether this node takes an execution now: None, or the refusal.

        Every execution passes here, from a client (``direct``) and from the
        SMS. A client never names the execution id: ids are the node's and
        the SMS's, and a client naming one could pose as an execution the SMS
        dispatches here later and have its own run reported.
        """
        if direct and execution_id:
            return errors.InvalidArgument("clients do not choose execution ids")
        if self.draining:
            return self._rejected(errors.Unavailable(f"node {self.node_id} is stopping"))
        if direct and function not in self.functions:
            return errors.NotFound(
                f"function {function!r} is not deployed on node {self.node_id}")
        if self.running >= self.max_concurrency:
            return self._rejected(errors.ResourceExhausted(
                f"node {self.node_id} is running {self.running} executions "
                f"(limit {self.max_concurrency})"))
        if timeout is not None:
            try:  # the node's maxima hold for timeouts sent through the SMS too
                self.check_limits(P.Limits(), timeout)
            except errors.SpearError as exc:
                return exc
        return None

    def _rejected(self, exc: errors.SpearError) -> errors.SpearError:
        if self.metrics is not None:
            self.metrics.rejected(exc.code)
        return exc

    # ------------------------------------------------------------ executions

    def _new(self, eid: str, function: str, msg: P.Invoke | P.Dispatch, now: float,
             ident: bytes | None, rid: int, mode: str, inline: bool) -> Execution:
        """Record an admitted execution (counted in ``running`` until it ends)."""
        self.running += 1
        trace_id, trace, parent, state = tracing.begin(self.tracer, msg.traceparent,
                                                       msg.tracestate, msg.trace_id, eid)
        ex = Execution(eid, function, trace_id, now, ident, rid, mode, inline=inline,
                       trace=trace, parent=parent, tracestate=state)
        self.executions[eid] = ex
        if not inline:  # an inline one leaves no record: nothing to make room for
            while len(self.executions) > self.keep_executions:
                old_id, old = next(iter(self.executions.items()))
                if not old.done:
                    break  # never forget a running execution
                del self.executions[old_id]
                self._read(old_id)
        return ex

    def _start(self, ex: Execution, data, args: list, timeout: float | None) -> Start:
        fn = self.functions[ex.function]
        limits = fn.spec.limits
        if timeout is not None:
            limits = msgspec.structs.replace(limits, timeout=timeout)
        ex.runtime = fn.spec.runtime
        if not ex.inline:
            ex.status = "running"
        return Start(ex.execution_id, ex.function, data, args, limits,
                     inline=ex.inline, stream=ex.mode == "stream", trace_id=ex.trace_id,
                     traceparent=ex.trace, tracestate=ex.tracestate)

    def _on_invoked(self, ev: Invoked, now: float) -> list:
        msg = ev.msg
        refusal = self.admit(msg.function, msg.timeout, direct=True,
                             execution_id=msg.execution_id)
        if refusal is not None:
            return [Reply(ev.ident, P.error_reply(msg.id, refusal))]
        ex = self._new(new_id(), msg.function, msg, now, ev.ident, msg.id, msg.mode,
                       inline=msg.mode == "sync")
        start = self._start(ex, ev.payload if ev.payload is not None else b"", msg.args,
                            msg.timeout)
        if msg.mode == "async":
            return [Reply(ev.ident, P.Accepted(id=msg.id, execution_id=start.execution_id)),
                    start]
        return [start]

    def _on_dispatched(self, ev: Dispatched, now: float) -> list:
        msg = ev.msg
        refusal = self.admit(msg.function, msg.timeout, direct=False)
        if refusal is not None:
            return [ToSMS(P.error_reply(msg.id, refusal))]
        known = self.executions.get(msg.execution_id)
        if known is not None:
            # a repeated dispatch: report what we have, never run it twice
            return [self._result_to_sms(msg.id, known.info, known.output, now)] \
                if known.done else []
        f = self.functions.get(msg.function)
        current = f is not None and f.sms_digest == msg.digest
        ex = self._new(msg.execution_id, msg.function, msg, now, None, msg.id,
                       "stream" if msg.stream else "sms", inline=current and not msg.stream)
        self.dispatched.add(msg.execution_id)
        data = ev.payload if ev.payload is not None else b""
        if current:
            return [self._start(ex, data, msg.args, msg.timeout)]
        ex.pending = (data, msg.args, msg.timeout)
        return [Ensure(msg.execution_id, msg.function, msg.digest)]

    def _on_ensured(self, ev: Ensured, now: float) -> list:
        ex = self.executions.get(ev.execution_id)
        if ex is None or ex.done or ex.pending is None:
            return []
        data, args, timeout = ex.pending
        ex.pending = None
        if ev.error is None and ex.function in self.functions:
            return [self._start(ex, data, args, timeout)]
        exc = ev.error or errors.NotFound(f"function {ex.function!r} was removed")
        # never started: the slot goes back, nothing is counted, no record stays
        self.running -= 1
        self.dispatched.discard(ev.execution_id)
        del self.executions[ev.execution_id]
        return [ToSMS(P.ErrorReply(id=ex.rid, code=exc.code,
                                   message=f"deploy failed: {exc.message}"))]

    def _finish(self, ev: Finished, now: float) -> list:
        """Account one ended execution, from either path, and answer for it."""
        eid = ev.execution_id
        ex = self.executions.get(eid)
        if ex is None or ex.done:
            return []  # ended once already
        self.running -= 1
        f = self.functions.get(ex.function)
        if f is not None:
            f.invocations += 1
        self.counts[ev.status] = self.counts.get(ev.status, 0) + 1
        err = ev.error
        if self.metrics is not None:
            self.metrics.execution_finished(ex.function, ex.runtime, ev.status, ev.queue,
                                            ev.cold, ev.run, ev.total,
                                            err.code if err is not None else "")
        ex.status = ev.status
        ex.info = info = P.ExecutionInfo(
            execution_id=eid, function=ex.function, status=ev.status, node_id=self.node_id,
            error=err, exit_code=ev.exit_code, usage=ev.usage, trace_id=ex.trace_id,
            submitted_at=now - ev.total if ev.inline else ex.submitted_at, finished_at=now,
            cold=ev.cold > 0, timings=P.Timings(queue=ev.queue, cold_start=ev.cold, run=ev.run,
                                                total=ev.total))
        if self.tracer and tracing.sampled(ex.trace):
            spans.finished(self.tracer, ex.trace, ex.parent, eid, ex.function, self.node_id, ev,
                           info.submitted_at, now)
        self._keep_output(ex, ev.output)
        ex.done = True
        ex.pending = None
        if ev.inline:
            del self.executions[eid]  # answered before anyone could look it up
        if ev.status != "succeeded" or log.isEnabledFor(logging.DEBUG):
            _log_end(info)
        if ex.ident is not None:
            if ex.mode == "async":
                return []
            return [Reply(ex.ident, P.Result(id=ex.rid, execution=info), ev.output)]
        self.dispatched.discard(eid)
        if self.draining and ev.status == "cancelled":
            # stopped by our own shutdown, not by a user: hand it back
            return [ToSMS(P.ErrorReply(id=ex.rid, code="UNAVAILABLE",
                                       message=f"node {self.node_id} stopped before it finished",
                                       details={"started": "1"}))]
        return [self._result_to_sms(ex.rid, info, ev.output, now)]

    def _result_to_sms(self, rid: int, info: P.ExecutionInfo, output, now: float) -> ToSMS:
        """A Result for the SMS, kept until a heartbeat's ack confirms it."""
        msg = P.Result(id=rid, execution=info)
        self.results.add(msg, output, now)
        return ToSMS(msg, output)

    def _on_logged(self, ev: Logged, now: float) -> list:
        ex = self.executions.get(ev.execution_id)
        if ex is None or ex.done:
            return []
        ex.seq += 1
        chunk = P.LogChunk(id=ex.rid, execution_id=ev.execution_id, data=bytes(ev.data),
                           seq=ex.seq)
        return [Reply(ex.ident, chunk) if ex.ident is not None else ToSMS(chunk)]

    def _not_found(self, eid: str) -> errors.NotFound:
        return errors.NotFound(f"execution {eid!r} not found on node {self.node_id}")

    def _on_cancel(self, ev: CancelAsked, now: float) -> list:
        msg = ev.msg
        if ev.ident is None:  # the SMS, which names whole ids: quietly, if it still runs
            ex = self.executions.get(msg.execution_id)
            return [Cancel(msg.execution_id)] if ex is not None and not ex.done else []
        try:
            ex = self._lookup(msg.execution_id)
        except errors.SpearError as exc:
            return [Reply(ev.ident, P.error_reply(msg.id, exc))]
        if ex.done:
            return [Reply(ev.ident, P.error_reply(msg.id, errors.InvalidArgument(
                f"execution {ex.execution_id} already finished ({ex.status})")))]
        return [Cancel(ex.execution_id), Reply(ev.ident, P.Ok(id=msg.id))]

    def _on_asked(self, ev: Asked, now: float) -> list:
        msg = ev.msg
        try:
            ex = self._lookup(msg.execution_id)
        except errors.SpearError as exc:
            return [Reply(ev.ident, P.error_reply(msg.id, exc))]
        if msg.wait > 0 and not ex.done:
            # the waiter is keyed by the whole id, whatever prefix was asked for
            return [Wait(ev.ident, msgspec.structs.replace(msg, execution_id=ex.execution_id))]
        output = ex.output
        self._read(ex.execution_id)
        return [Reply(ev.ident, P.Result(id=msg.id, execution=self._info(ex)), output)]

    def _keep_output(self, ex: Execution, output) -> None:
        """Keep what a later read of ``ex`` may need (see :data:`KEEP_OUTPUT`)."""
        if len(output) <= KEEP_OUTPUT:
            ex.output = output
            return
        if ex.ident is None or ex.mode != "async":
            ex.output = b""  # delivered with the Result this ending sends
            return
        ex.output = output
        self.unread[ex.execution_id] = len(output)
        self.unread_bytes += len(output)
        while self.unread_bytes > KEEP_UNREAD_BYTES:
            old_id, size = next(iter(self.unread.items()))
            self._read(old_id)
            log.warning("output of execution %s (%d bytes) dropped unread: over %d MiB of "
                        "unread outputs on this node", old_id, size, KEEP_UNREAD_BYTES >> 20,
                        extra={"execution_id": old_id})

    def _read(self, eid: str) -> None:
        """``eid``'s big output was delivered (or its record forgotten): it goes."""
        size = self.unread.pop(eid, None)
        if size is not None:
            self.unread_bytes -= size
            ex = self.executions.get(eid)
            if ex is not None:
                ex.output = b""

    # ------------------------------------------------------------ functions

    def _on_deployed(self, ev: Deployed, now: float) -> list:
        self.functions[ev.spec.name] = Function(ev.spec, ev.digest, ev.sms_digest)
        return []

    def _on_remove(self, ev: RemoveAsked, now: float) -> list:
        if self.functions.pop(ev.name, None) is not None:
            return [Remove(ev.name, ev.ident, ev.msg_id)]
        if ev.ident is None:
            return []
        return [Reply(ev.ident, P.error_reply(ev.msg_id, errors.NotFound(
            f"function {ev.name!r} is not deployed on node {self.node_id}")))]

    # ------------------------------------------------------------ SMS link

    def _on_welcomed(self, ev: Welcomed, now: float) -> list:
        self.session = ev.session
        return []

    def _on_heartbeat_due(self, ev: HeartbeatDue, now: float) -> list:
        hb = P.Heartbeat(id=ev.msg_id, node_id=self.node_id, usage=ev.usage,
                         running_ids=list(self.dispatched)[:50_000], session=self.session,
                         finished=self.results.pending())
        return [SendHeartbeat(hb, self.session, self.results.mark())]

    def _on_heartbeat_acked(self, ev: HeartbeatAcked, now: float) -> list:
        ack = ev.ack
        if not isinstance(ack, P.HeartbeatAck) or ev.session != self.session:
            return []  # the answer to a heartbeat of an earlier registration
        if not ack.known:
            return [Reregister()]
        if ack.acked:
            self.results.ack(ack.acked)
        out = []
        for kept in self.results.to_resend(ack.resend, ev.seq) if ack.resend else ():
            info = kept.msg.execution
            log.info("sending the result of execution %s again", info.execution_id,
                     extra={"execution_id": info.execution_id, "trace_id": info.trace_id})
            out.append(ToSMS(kept.msg, kept.payload))
        return out

    def _on_drain(self, ev: Drain, now: float) -> list:
        self.draining = True
        return []


def _log_end(info: P.ExecutionInfo) -> None:
    log.log(logging.INFO if info.status != "succeeded" else logging.DEBUG,
            "execution %s of %s %s in %.3f ms%s", info.execution_id, info.function,
            info.status, info.timings.total * 1e3,
            f": {info.error.code}: {info.error.message}" if info.error else "",
            extra={"trace_id": info.trace_id, "execution_id": info.execution_id,
                   "function": info.function, "status": info.status})
