"""Placement of executions: scheduling, dispatch, spillback, the waiting queues, endings.

Part of the SMS core (no I/O): :class:`Placement` picks a node for an
execution and reserves its share there (:mod:`spear.sms.scheduler`), queues
it per function when nothing fits, moves it on when a node refuses it, and
gives the share back when it ends. Submissions and node replies that drive
it: :mod:`spear.sms.executions`.
"""

from __future__ import annotations

import collections
import logging

import msgspec

from .. import protocol as P, tracing
from ..protocol import TERMINAL
from . import spans
from .records import MiB, Exec, ExecutionRecords
from .scheduler import BASELINE, FINISH

#: the least memory the "pack" policy reserves for one execution
MIN_RESERVE = 1 * MiB


def input_size(ex: Exec) -> int:
    """Bytes of ``ex``'s input (0 when it was not kept): what the cost models learn on."""
    return len(ex.data) if ex.data else 0

# the logger name operators filter on (docs/operations.md)
log = logging.getLogger("spear.sms.tasks")


class Placement(ExecutionRecords):
    """Where executions run, and giving their place back when they end."""

    def _place(self, ex: Exec, now: float, defer: list | None = None) -> None:
        """Dispatch a new execution, or queue it behind its function's queue."""
        name = ex.info.function
        if self.queues.get(name):
            self.retry_queue(now, function=name)
        if self.queues.get(name):  # earlier ones still wait: queue behind them
            self._enqueue(ex, now)
        else:
            self._schedule(ex, now, defer=defer)

    def _deadline(self, ex: Exec, spec: P.FunctionSpec | None, now: float) -> float:
        """When a node must have finished ``ex`` dispatched at ``now`` (SMS-side)."""
        run = ex.timeout or (spec.limits.timeout if spec is not None else None)
        return now + (run or self.s.default_run_timeout) + self.s.deadline_grace

    def _need(self, spec: P.FunctionSpec) -> tuple[float, float]:
        cpu = spec.limits.cpus if spec.limits.cpus is not None else self.s.default_cpu
        mem = (spec.limits.memory_mb or self.s.default_memory_mb) * MiB
        return cpu, float(mem)

    def _plan(self, name: str, ex: Exec, mem: float) -> tuple[int, float, float, float]:
        """Scoring policy, predicted run time (on a reference node at no load: the
        kernel applies each node's speed factor and load), cold start and memory to
        reserve for one dispatch of ``name`` under ``[sms] placement`` (``mem``:
        what it asks for).

        Without a trusted prediction every policy is the baseline. "pack" reserves
        the predicted peak (with its margin) but never more than the request: the
        limit the node enforces stays the request, so a wrong model can only make
        the SMS overcommit its bookkeeping, never fail an execution.
        """
        placement = self.s.placement
        if placement == "baseline":
            return BASELINE, 0.0, 0.0, mem
        p = self.models.predict(name, input_size(ex))
        if p is None:
            return BASELINE, 0.0, 0.0, mem
        if placement == "finish":
            return FINISH, p.duration_s, self.models.cold_start(name), mem
        return BASELINE, 0.0, 0.0, min(mem, float(max(p.memory, MIN_RESERVE)))

    def _learn(self, ex: Exec, result: P.ExecutionInfo) -> None:
        """Feed a succeeded execution's run time and peak memory, with the type and
        load of the node it was dispatched to, to the cost models; when the node
        types' speed factors moved, refresh the scheduler's column (off the dispatch
        path; and the function's own column, when its factors moved: after the
        pooled factors or the nodes changed it is rebuilt once at its next dispatch)."""
        run = result.timings.run
        if run > 0.0:
            name = ex.info.function
            models = self.models
            models.observe(name, input_size(ex), run, result.usage.peak_memory,
                           ex.placed_type, ex.placed_load)
            if result.cold and result.timings.cold_start > 0.0:
                models.observe_cold_start(name, result.timings.cold_start)
            if models.version != self.table.speeds_version:
                self.table.set_speeds(models.speed_factors(), models.version)
            own = models.function_factors(name)
            if own is not None:  # rebuilt here if they moved, not at its next dispatch
                self.table.function_speed(name, own)

    def queued_cores(self) -> float:
        """The cores the queued executions ask for together (what an autoscaler must add)."""
        return sum(len(q) * self._need(self.functions[name].spec)[0]
                   for name, q in self.queues.items() if name in self.functions)

    def _schedule(self, ex: Exec, now: float, *, from_queue: bool = False,
                  defer: list | None = None) -> bool:
        """Pick a node and dispatch; queue if nothing fits; fail if nothing ever can.

        ``defer``: collect the Dispatch there instead of sending it (commit()
        sends it once the record that names the node is on disk).
        """
        fn = self.functions.get(ex.info.function)
        if fn is None:
            self._end(ex, "failed", now, "NOT_FOUND", f"function {ex.info.function!r} was removed")
            return False
        spec = fn.spec
        cpu, mem = self._need(spec)
        policy, duration, cold, reserve = self._plan(spec.name, ex, mem)
        table = self.table
        finish = policy == FINISH
        picks = table.candidates(runtime=spec.runtime, labels=spec.labels,
                                 function=spec.name, cpu=cpu, mem=reserve, k=1,
                                 exclude=ex.excluded or None, policy=policy,
                                 duration=duration, cold=cold,
                                 slope=self.models.load_slope if finish else 1.0,
                                 speed=table.function_speed(
                                     spec.name, self.models.function_factors(spec.name))
                                 if finish else None)
        if not picks:
            if from_queue and not ex.excluded:
                return False  # still waiting; the reason is worked out only to fail it
            why, transient = self.table.why_not(runtime=spec.runtime, labels=spec.labels,
                                                cpu=cpu, mem=mem)
            if now < self.grace_until and not self.table.all_ready():
                transient = True  # nodes may still be reattaching after an SMS restart
            if not transient and not ex.excluded:
                # nothing could ever run it right now: fail clearly instead of waiting
                self._end(ex, "failed", now, "UNAVAILABLE", why)
                return False
            if not ex.queued_at:
                self._enqueue(ex, now)
            ex.excluded.clear()
            return False
        node = picks[0]
        ex.node = node
        ex.sent_to.add(node)
        ex.reserved = (cpu, reserve)
        slot = table.slot_of[node]  # what the models learn the result against
        ex.placed_type = table.type_of[slot]
        ex.placed_load = table.load[slot]
        table.take(node, cpu, reserve)
        ex.dispatch_id = next(self._dispatch_ids)
        ex.dispatched_at = now
        ex.deadline = self._deadline(ex, spec, now)
        traceparent = spans.dispatching(self.tracer, ex, node, ex.queued_at or now, now)
        ex.queued_at = 0.0
        ex.info = msgspec.structs.replace(ex.info, status="scheduled", node_id=node,
                                          attempts=ex.info.attempts + 1)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("execution %s of %s dispatched to %s (attempt %d)", ex.info.execution_id,
                      spec.name, node, ex.info.attempts,
                      extra={"trace_id": ex.info.trace_id, "execution_id": ex.info.execution_id})
        self.by_node[node].add(ex.info.execution_id)
        self.dirty.add(ex.info.execution_id)
        msg = P.Dispatch(
            id=ex.dispatch_id, execution_id=ex.info.execution_id, function=spec.name,
            digest=fn.digest, args=ex.info.args, timeout=ex.timeout, trace_id=ex.info.trace_id,
            stream=ex.stream, traceparent=traceparent, tracestate=ex.tracestate)
        if defer is not None:
            defer.append((node, msg, ex.data or None))
            return True
        self._send_dispatch(node, msg, ex.data or None, now)
        return True

    def _send_dispatch(self, node: str, msg: P.Dispatch, payload, now: float) -> None:
        ex = self.execs.get(msg.execution_id)
        if ex is None or ex.node != node or ex.dispatch_id != msg.id:
            return  # it moved on meanwhile (cancelled, node lost)
        if not self.outbox.to_node(node, msg, payload):  # no empty payload frame above
            self._spill(ex, now, "could not send to node")

    def dispatch_failed(self, msg: P.Dispatch, now: float) -> None:
        """The Dispatch ``msg`` could not be sent: spill it, unless it moved on meanwhile."""
        ex = self.execs.get(msg.execution_id)
        if ex is not None and ex.node and ex.dispatch_id == msg.id:
            self._spill(ex, now, "could not send to node")

    def _unassign(self, ex: Exec) -> None:
        if ex.node:
            if ex.span:  # the attempt there is over
                spans.attempt_ended(self.tracer, ex, ex.node)
            self.table.give(ex.node, *ex.reserved)
            self.by_node[ex.node].discard(ex.info.execution_id)
            ex.node = ""
            ex.reserved = (0.0, 0.0)

    def _spill(self, ex: Exec, now: float, reason: str) -> None:
        """The chosen node refused or failed: penalise it and try the next one."""
        node = ex.node
        self._unassign(ex)
        self.table.penalise(node, now)
        ex.excluded.add(node)
        ex.spills += 1
        if ex.spills > self.s.max_spills:
            self._end(ex, "failed", now, "RESOURCE_EXHAUSTED",
                      f"refused by {ex.spills} nodes; last: {reason}")
            return
        ex.info = msgspec.structs.replace(ex.info, status="pending")
        self._schedule(ex, now)

    # ------------------------------------------------------------------ endings

    def _end(self, ex: Exec, status: str, now: float, code: str = "", message: str = "",
             output: bytes = b"", result: P.ExecutionInfo | None = None, node: str = "") -> None:
        """``ex`` ends ``status``; ``result``: what ``node`` reported of it (its error,
        exit code, timings, usage), taken into the record in the same copy."""
        self._unassign(ex)
        if result is not None:
            if status == "succeeded" and self.s.placement != "baseline":
                self._learn(ex, result)  # nothing reads the models under the baseline
            ex.info = msgspec.structs.replace(
                ex.info, node_id=node, error=result.error, exit_code=result.exit_code,
                timings=result.timings, usage=result.usage, cold=result.cold, status=status,
                finished_at=now)
        else:
            err = ex.info.error
            if code:
                err = P.ErrorInfo(code=code, message=message)
            ex.info = msgspec.structs.replace(ex.info, status=status, error=err, finished_at=now)
        ex.output = output
        ex.data = b""
        ex.queued_at = 0.0
        self.counts[status] += 1
        self.dirty.add(ex.info.execution_id)
        if status != "succeeded" or log.isEnabledFor(logging.DEBUG):
            log.log(logging.INFO if status != "succeeded" else logging.DEBUG,
                    "execution %s of %s %s on %s after %d attempt(s)%s", ex.info.execution_id,
                    ex.info.function, status, ex.info.node_id or "-", ex.info.attempts,
                    f": {ex.info.error.code}: {ex.info.error.message}" if ex.info.error else "",
                    extra={"trace_id": ex.info.trace_id, "execution_id": ex.info.execution_id,
                           "function": ex.info.function, "status": status})
        for w in ex.waiters:
            self.outbox.to_client(w.ident, *self.result_msg(ex, w.rid))
        ex.waiters.clear()
        if len(ex.output) > self.s.keep_output:
            ex.output = b""  # delivered to the waiters; not retained (memory bound)
        if self.queued:
            self.retry_queue(now)  # the capacity it freed goes to the queues first
        if self.tracer and tracing.sampled(ex.trace):
            spans.ended(self.tracer, ex, now)
        self._event("execution", ex.info.execution_id, status, now, ex.info.function)

    def _event(self, kind: str, key: str, state: str, now: float, detail: str = "") -> None:
        if self.on_event is not None:
            self.on_event(kind, key, state, now, detail)

    # ------------------------------------------------------------------ upkeep

    def retry_queue(self, now: float, *, full: bool = False, function: str | None = None) -> None:
        """Try queued executions again (capacity may have freed).

        The quick pass (after a completion or a new node) dispatches from the
        head of each function's queue and stops there at the first that still
        does not fit: O(functions waiting + dispatched). The full pass (the
        periodic tick) also expires old entries and looks past a head that does
        not fit (executions of one function differ only in the nodes they have
        already failed on). ``function``: only that function's queue.
        """
        if self._retrying or not self.queued:
            return
        self._retrying = True
        try:
            for name in ([function] if function is not None else list(self.queues)):
                q = self.queues.get(name)
                if q is not None:
                    if full:
                        self._retry_all(q, now)
                    else:
                        self._retry_head(q, now)
                    if not q and self.queues.get(name) is q:
                        del self.queues[name]
        finally:
            self._retrying = False

    def _retry_head(self, q: collections.deque[str], now: float) -> None:
        while q:
            eid = q[0]
            ex = self.execs.get(eid)
            if ex is None or ex.info.status in TERMINAL or ex.node:
                q.popleft()
                self.queued -= 1
                continue
            if not self._schedule(ex, now, from_queue=True):
                if ex.info.status in TERMINAL and q and q[0] == eid:
                    q.popleft()
                    self.queued -= 1
                    continue
                return
            if q and q[0] == eid:
                q.popleft()
                self.queued -= 1

    #: consecutive queued executions that still don't fit before a pass stops trying
    QUEUE_MISSES = 16

    def _retry_all(self, q: collections.deque[str], now: float) -> None:
        keep: list[str] = []
        misses = 0
        for _ in range(len(q)):
            if not q:
                break
            eid = q.popleft()
            self.queued -= 1
            ex = self.execs.get(eid)
            if ex is None or ex.info.status in TERMINAL or ex.node:
                continue
            if now - ex.queued_at > self.s.queue_timeout:
                self._end(ex, "failed", now, "RESOURCE_EXHAUSTED",
                          f"no node had capacity for {self.s.queue_timeout:g}s")
                continue
            if misses >= self.QUEUE_MISSES:
                keep.append(eid)  # nothing frees up by looking further: keep order, stop
                continue
            if self._schedule(ex, now, from_queue=True):
                misses = 0
            elif ex.info.status not in TERMINAL:
                keep.append(eid)
                misses += 1
        q.extendleft(reversed(keep))
        self.queued += len(keep)

