"""Executions of the SMS: submission, scheduling, dispatch, node replies, endings.

Part of the SMS core: no sockets, no store, no clock. ``now`` is passed in;
messages go to an :class:`Outbox` (the core turns them into ``Send``
instructions; tests use a list); writes and cold reads are yielded as
``Persist`` / ``Load`` (see :mod:`spear.sms.events`) by the generator methods.
Scheduling, queues and endings: :mod:`spear.sms.placement`; records and
retention: :mod:`spear.sms.records`.

Life of an execution submitted through the SMS::

    submit ─► pending ─(scheduler picks a node, reserves cpu/mem)─► scheduled
                                 ─(the node's heartbeat lists it)─► running
       │         ▲ no node fits: queued per function (bounded), retried on every change
       │         └──── spillback: node refused (RESOURCE_EXHAUSTED...) ◄──┐
       │                                                                   │
       └► Dispatch ──► node runs it ──► Result ─► succeeded | failed | timed_out
                                                  | cancelled  (reservation returned)
    node lost / stops reporting it: retry elsewhere if retries allow, else ``lost``

Each function waits in its own FIFO queue, so executions that cannot run
yet (their nodes are full) never hold back another function's executions
that a free node could run.

A dispatched execution has a deadline in the SMS too: its timeout (or
``default_run_timeout``) plus ``deadline_grace``. A node that keeps listing it
as running past that (hung, or misbehaving) no longer holds it nor its
reservation: it ends ``timed_out`` and the node is told to cancel it.

Results are matched by execution id, so a late result (after a retry or an
SMS restart) is accepted once and never counted twice. Heartbeats list the
executions a node is running; an execution the node no longer reports is
treated as lost on that node.
"""

from __future__ import annotations

import collections
import logging
from typing import Generator, Iterable

import msgspec

from .. import errors, protocol as P, tracing
from ..protocol import TERMINAL
from ..ids import new_id
from . import queries, spans
from .events import Load, Persist, unavailable_text
from .functions import FunctionRegistry
from .placement import Placement
from .records import (COUNTS_KEY, Exec, Outbox, StoredCounts, TaskSettings, Waiter, _dec_counts,
                      _dec_ex, _enc)
from .scheduler import NodeTable

# the logger name operators filter on (docs/operations.md), kept from before the split
log = logging.getLogger("spear.sms.tasks")


class Executions(Placement):
    """Execution manager of the SMS: submissions, placement, node replies, endings."""

    def __init__(self, table: NodeTable, fns: FunctionRegistry, outbox: Outbox, *, now: float,
                 settings: TaskSettings | None = None, on_event=None,
                 records: Iterable[tuple[bytes, bytes]] = (), counts: bytes | None = None) -> None:
        """Executions over ``table`` and ``fns``, rebuilt from recovered ``records``
        and ``counts``; messages go to ``outbox``, changes to ``on_event``."""
        super().__init__(table, fns, outbox, now=now, settings=settings, on_event=on_event)
        self._load(records, counts, now)

    # ------------------------------------------------------------------ load

    def _load(self, records: Iterable[tuple[bytes, bytes]], counts: bytes | None,
              now: float) -> None:
        """Rebuild from recovered records: work in flight is kept or queued again."""
        if counts:
            try:
                self.counts.update(_dec_counts.decode(counts).counts)
            except msgspec.DecodeError:
                log.error("corrupt counters record: counting from zero")
        recovered = []
        for key, raw in records:
            try:
                st = _dec_ex.decode(raw)
            except msgspec.DecodeError:
                log.error("skipping corrupt execution record %r", key)
                continue
            i = st.info
            if st.idem:
                self.by_idem[st.idem] = i.execution_id
            if i.status in TERMINAL:  # only its index entry stays in memory
                self.archive[i.execution_id] = queries.index_entry(i, st.idem)
                continue
            ex = Exec(info=st.info, output=st.output, retries=st.retries, timeout=st.timeout,
                      data=st.input, failures=st.failures, stream=st.stream, idem=st.idem,
                      trace=st.trace, parent=st.parent, tracestate=st.tracestate)
            self.execs[i.execution_id] = ex
            recovered.append(ex)
        # oldest first, so retention prunes the right ones
        self.execs = collections.OrderedDict(
            sorted(self.execs.items(), key=lambda kv: kv[1].info.submitted_at))
        self.archive = collections.OrderedDict(sorted(self.archive.items(), key=lambda kv: kv[1][0]))
        for ex in recovered:
            if ex.info.status in ("scheduled", "running") and ex.info.node_id:
                # it may still be running there: the node's next heartbeats tell;
                # it keeps its slot and reservation until then
                ex.node = ex.info.node_id
                ex.sent_to.add(ex.node)
                ex.dispatched_at = now
                fn = self.functions.get(ex.info.function)
                ex.reserved = self._need(fn.spec) if fn is not None else (0.0, 0.0)
                ex.deadline = self._deadline(ex, fn.spec if fn is not None else None, now)
                self.table.take(ex.node, *ex.reserved)
                self.by_node[ex.node].add(ex.info.execution_id)
            elif ex.data is not None:
                ex.info = msgspec.structs.replace(ex.info, status="pending")
                self._enqueue(ex, now)  # dispatched once nodes are back
            else:
                self._end(ex, "lost", now, "UNAVAILABLE", "SMS restarted before it was "
                          "dispatched and its input was too large to keep")
        if self.functions or self.execs or self.archive:
            log.info("recovered %d function(s), %d execution record(s), %d in flight",
                     len(self.functions), len(self.execs) + len(self.archive), len(recovered))

    # ------------------------------------------------------------------ submit

    def submit(self, ident: bytes, msg: P.Invoke, payload, now: float, owner: str = "",
               eid: str | None = None):
        """Accept an invocation; returns the immediate reply, or None - or, when
        the execution its idempotency key names must be read back from its
        record first, a generator that yields that ``Load`` and returns the reply.

        Write-ahead order for ``async``: the execution is persisted (synced,
        one batch for all submissions of a loop pass: :meth:`commit`), then
        acknowledged, then dispatched; nothing is acknowledged or run if the
        write fails. ``sync``/``stream`` invocations are acknowledged by their
        result. ``idempotency_key`` (scoped to ``owner``, the caller's key):
        a repeated submission returns the first execution instead of a new one.
        ``eid``: the id to use (tests); by default a new UUIDv7. Clients never
        choose it: the daemon refuses ``Invoke.execution_id``.
        """
        fn = self.fns.get(msg.function)
        idem = f"{owner}\x00{msg.idempotency_key}" if msg.idempotency_key else ""
        if idem:
            first = self.by_idem.get(idem)
            ex = self.execs.get(first) if first is not None else None
            if ex is not None:
                return self._resubmitted(ex, ident, msg, now)
            if first is not None and first in self.archive:
                return self._resubmit_archived(first, fn, idem, ident, msg, payload, now, eid)
        return self._submit_new(fn, idem, ident, msg, payload, now, eid)

    def _resubmit_archived(self, first: str, fn, idem: str, ident: bytes, msg: P.Invoke,
                           payload, now: float, eid: str | None) -> Generator[Load, list, object]:
        """:meth:`submit` of a key whose first execution is on disk only."""
        ex = yield from self.find(first)
        if ex is not None:
            return self._resubmitted(ex, ident, msg, now)
        return self._submit_new(fn, idem, ident, msg, payload, now, eid)

    def _submit_new(self, fn, idem: str, ident: bytes, msg: P.Invoke, payload, now: float,
                    eid: str | None):
        """A new execution of ``fn`` (see :meth:`submit`)."""
        store_error = self.store_error
        if store_error:
            raise errors.Unavailable(f"SMS storage is failing ({store_error}); "
                                     "new work is refused until writes succeed again")
        if self.queued >= self.s.max_queue:
            raise errors.ResourceExhausted(f"SMS queue is full ({self.s.max_queue} executions waiting)")
        eid = eid or new_id()
        if eid in self.execs or eid in self.archive:
            raise errors.InvalidArgument(f"execution id {eid!r} already exists")
        tracer = self.tracer
        trace_id, trace, parent, state = tracing.begin(tracer, msg.traceparent, msg.tracestate,
                                                        msg.trace_id, eid)
        info = P.ExecutionInfo(execution_id=eid, function=fn.spec.name, status="pending",
                               trace_id=trace_id, submitted_at=now, args=list(msg.args))
        ex = Exec(info=info, data=payload if payload is not None else b"",
                  timeout=msg.timeout, retries=fn.spec.retries, stream=msg.mode == "stream",
                  idem=idem, trace=trace, parent=parent, tracestate=state)
        if tracer and tracing.sampled(trace):
            spans.admitted(tracer, ex, now)
        self.execs[eid] = ex
        if idem:
            self.by_idem[idem] = eid
        self.counts["submitted"] += 1
        self._prune()
        if msg.mode == "async":
            self.unacked.append((ex, ident, msg.id))  # see commit()
            return None
        ex.waiters.append(Waiter(ident, msg.id, float("inf"), stream=ex.stream))
        # counted above: its record goes in the same flush as the counters, even
        # if it waits in a queue (a crash must leave them balanced)
        self.dirty.add(eid)
        self._place(ex, now)
        return None

    def _resubmitted(self, ex: Exec, ident: bytes, msg: P.Invoke, now: float):
        """A submission whose idempotency key was seen: the first execution answers."""
        if ex.info.function != msg.function:
            raise errors.InvalidArgument(
                f"idempotency key already used for an execution of {ex.info.function!r}")
        self.counts["deduplicated"] += 1
        if msg.mode == "async":
            if any(u[0] is ex for u in self.unacked):  # not yet durable: acked with it
                self.unacked.append((ex, ident, msg.id))
                return None
            return P.Accepted(id=msg.id, execution_id=ex.info.execution_id)
        if ex.info.status in TERMINAL:
            return self.result_msg(ex, msg.id)
        ex.waiters.append(Waiter(ident, msg.id, float("inf"), stream=msg.mode == "stream"))
        return None

    def commit(self, now: float) -> Generator[Persist, str, None]:
        """Group commit of async submissions: persist (synced), acknowledge, dispatch.

        Placement is decided first so the records say where each execution
        goes; the Dispatches leave only after the write succeeded. If it fails
        every submission in the batch is answered UNAVAILABLE and forgotten:
        nothing unacknowledged runs.
        """
        batch, self.unacked = self.unacked, []
        if not batch:
            return
        dispatches: list = []
        fresh = []
        seen: set[str] = set()
        for ex, _, _ in batch:
            if ex.info.execution_id in seen:
                continue
            seen.add(ex.info.execution_id)
            fresh.append(ex)
            if ex.info.status not in TERMINAL:  # (a cancel may have come first)
                self._place(ex, now, defer=dispatches)
        # with the dirty records and the counters in one batch: the counters on
        # disk always match the records on disk, so after a crash the stats
        # still balance (retention's deletes wait for the next flush)
        others = [eid for eid in self.dirty if eid not in seen and eid in self.execs]
        puts = [self._record(ex) for ex in fresh] + [self._record(self.execs[e]) for e in others]
        puts.append((COUNTS_KEY, _enc.encode(StoredCounts(counts=dict(self.counts)))))
        error = yield Persist(puts, (), True)
        if error:
            exc = errors.Unavailable(unavailable_text(error))
            for ex in fresh:
                self._forget(ex)
            for _, ident, rid in batch:
                self.outbox.to_client(ident, P.error_reply(rid, exc))
            return
        self.dirty.difference_update(seen)
        self.dirty.difference_update(others)
        for ex, ident, rid in batch:
            self.outbox.to_client(ident, P.Accepted(id=rid, execution_id=ex.info.execution_id))
        for node, msg, payload in dispatches:
            self._send_dispatch(node, msg, payload, now)

    def _forget(self, ex: Exec) -> None:
        """Undo a submission that was never acknowledged (its write failed)."""
        self._unassign(ex)
        eid = ex.info.execution_id
        self.execs.pop(eid, None)
        self.dirty.discard(eid)
        if ex.idem and self.by_idem.get(ex.idem) == eid:
            del self.by_idem[ex.idem]
        self.counts["submitted"] -= 1
        if ex.info.status in TERMINAL:  # ended while being placed: not counted after all
            self.counts[ex.info.status] -= 1
        self.counts["refused_unpersisted"] += 1
        for w in ex.waiters:  # a sync repeat of its idempotency key waited on it
            self.outbox.to_client(w.ident, P.error_reply(w.rid, errors.Unavailable(
                "the submission this idempotency key names could not be persisted")))
        ex.waiters.clear()

    # ------------------------------------------------------------------ node replies

    def on_result(self, node: str, msg: P.Result, payload, now: float) -> None:
        """A node finished an execution (any terminal status)."""
        info = msg.execution
        ex = self.execs.get(info.execution_id)
        if ex is not None and not self._from_its_node(ex, node, "result"):
            return
        if ex is None or ex.info.status in TERMINAL:
            self.counts["late_results"] += 1
            return
        if ex.node and ex.node != node:
            # a result from an earlier attempt: take it, free the current one
            self.outbox.to_node(ex.node, P.CancelExecution(id=0, execution_id=info.execution_id))
        self.table.mark_warm(node, ex.info.function)
        status = info.status if info.status in TERMINAL else "failed"
        self._end(ex, status, now, output=payload if payload is not None else b"",
                  result=info, node=node)

    def _from_its_node(self, ex: Exec, node: str, what: str) -> bool:
        """Only a node an execution was dispatched to may report on it."""
        if node in ex.sent_to:
            return True
        self.counts["forged_reports"] += 1
        log.warning("SECURITY: dropped a %s for execution %s from node %s, which it was "
                    "never dispatched to", what, ex.info.execution_id, node,
                    extra={"trace_id": ex.info.trace_id, "execution_id": ex.info.execution_id})
        return False

    def on_log(self, node: str, msg: P.LogChunk) -> None:
        """Relay a log chunk of a streamed execution to its streaming waiters."""
        ex = self.execs.get(msg.execution_id)
        if ex is None or not self._from_its_node(ex, node, "log chunk"):
            return
        for w in ex.waiters:
            if w.stream:
                self.outbox.to_client(w.ident, P.LogChunk(id=w.rid, execution_id=msg.execution_id,
                                                          data=msg.data, seq=msg.seq))

    def on_dispatch_error(self, node: str, msg: P.ErrorReply, now: float) -> None:
        """A node refused a Dispatch (identified by its id)."""
        for eid in list(self.by_node.get(node, ())):
            ex = self.execs.get(eid)
            if ex is not None and ex.dispatch_id == msg.id:
                if msg.details.get("started"):
                    # it ran (partly) there: a node failure, retried only if allowed
                    self._node_failed(ex, now, f"{msg.code}: {msg.message}")
                elif msg.code in ("RESOURCE_EXHAUSTED", "UNAVAILABLE"):
                    self._spill(ex, now, f"{msg.code}: {msg.message}")
                else:
                    self._unassign(ex)
                    self._end(ex, "failed", now, msg.code, msg.message)
                return

    def on_running(self, node: str, running: list[str], now: float,
                   finished: list[str] | tuple = ()) -> None:
        """Reconcile with a heartbeat's list of executions the node is running.

        ``finished``: executions the node has finished and is sending the
        result of again (after a link reset): present, and not lost. No state
        is exempt from the deadline: a result still missing ``deadline_grace``
        after the deadline (it never gets through: too large, or the node
        keeps failing to send it) ends the execution failed, UNAVAILABLE.
        """
        mine = self.by_node.get(node)
        if not mine:
            return
        present = set(running)
        done = set(finished) if finished else ()
        for eid in list(mine):
            ex = self.execs.get(eid)
            if ex is None:
                continue
            if eid in done:
                if now > ex.deadline + self.s.deadline_grace:
                    self.counts["undelivered"] += 1
                    self._end(ex, "failed", now, "UNAVAILABLE",
                              f"node {node} finished it but its result never reached the SMS "
                              f"(still missing {now - ex.dispatched_at:.1f}s after dispatch)")
                continue
            if eid in present:
                if now > ex.deadline:
                    self._overdue(ex, now)
                elif ex.info.status == "scheduled":
                    self._started(ex, now)
                continue
            if now - ex.dispatched_at > self.s.report_grace:
                self._node_failed(ex, now, f"node {node} no longer reports execution {eid}")

    def _started(self, ex: Exec, now: float) -> None:
        """The node lists a scheduled execution as its own: it is ``running``.

        The heartbeat already carries every execution a node holds, so this
        costs no message per execution; the status shows a heartbeat
        interval late at most (never for calls shorter than that).
        """
        ex.info = msgspec.structs.replace(ex.info, status="running")
        self.dirty.add(ex.info.execution_id)
        self._event("execution", ex.info.execution_id, "running", now, ex.info.function)

    def _overdue(self, ex: Exec, now: float) -> None:
        """A node still runs an execution past its SMS-side deadline: end it here."""
        node = ex.node
        self.outbox.to_node(node, P.CancelExecution(id=0, execution_id=ex.info.execution_id))
        self.counts["overdue"] += 1
        self._end(ex, "timed_out", now, "DEADLINE_EXCEEDED",
                  f"node {node} still ran it {now - ex.dispatched_at:.1f}s after dispatch "
                  f"(deadline: timeout + {self.s.deadline_grace:g}s grace)")

    def node_lost(self, node: str, now: float, reason: str) -> None:
        """The node turned unhealthy or left: retry or lose what ran there."""
        for eid in list(self.by_node.get(node, ())):
            ex = self.execs.get(eid)
            if ex is not None:
                self._node_failed(ex, now, f"node {node} {reason}")
        self.by_node.pop(node, None)

    def _node_failed(self, ex: Exec, now: float, reason: str) -> None:
        node = ex.node
        self._unassign(ex)
        ex.failures += 1
        if ex.cancel_at:
            # the user cancelled it and its node went away before confirming:
            # what the user asked for is what happened, as far as anyone can tell
            self._end(ex, "cancelled", now, "CANCELLED", f"cancelled (then {reason})")
            return
        if ex.failures <= ex.retries and ex.data is not None:
            log.info("retrying %s of %s after: %s", ex.info.execution_id, ex.info.function, reason,
                     extra={"trace_id": ex.info.trace_id, "execution_id": ex.info.execution_id})
            self.counts["retried"] += 1
            ex.excluded.add(node)
            ex.info = msgspec.structs.replace(ex.info, status="pending")
            self._schedule(ex, now)
        else:
            self._end(ex, "lost", now, "UNAVAILABLE", reason)

    # ------------------------------------------------------------------ client queries

    def cancel(self, eid: str, now: float) -> Generator[Load, list, None]:
        """Cancel an execution: at once if not dispatched, else through its node."""
        ex = yield from self.get(eid)
        eid = ex.info.execution_id  # ``eid`` may have been a prefix
        if ex.info.status in TERMINAL:
            raise errors.InvalidArgument(f"execution {eid} already finished ({ex.info.status})")
        if ex.node:
            self.outbox.to_node(ex.node, P.CancelExecution(id=0, execution_id=eid))
            # the node's Result (status cancelled) ends it; if the node is gone,
            # node_lost does. Also end it here after a grace, see tick().
            ex.retries = 0
            ex.cancel_at = now
            self.watch.add(eid)
        else:
            self._end(ex, "cancelled", now, "CANCELLED", "cancelled before it was dispatched")

    def tick(self, now: float) -> Generator[Persist, str, None]:
        """Expire waiters, end cancels whose node never answered, retry the queue, flush."""
        for eid in list(self.watch):
            ex = self.execs.get(eid)
            if ex is None or ex.info.status in TERMINAL:
                self.watch.discard(eid)
                continue
            if ex.waiters and any(w.deadline <= now for w in ex.waiters):
                keep = []
                for w in ex.waiters:
                    if w.deadline <= now:
                        self.outbox.to_client(w.ident, *self.result_msg(ex, w.rid))
                    else:
                        keep.append(w)
                ex.waiters = keep
            if ex.cancel_at and now - ex.cancel_at > 10.0 and ex.info.status not in TERMINAL:
                self._end(ex, "cancelled", now, "CANCELLED", "cancelled (node did not confirm)")
        if self.queued:
            self.retry_queue(now, full=True)
        if now - self._aged_at >= 1.0:  # retention by age, once a second
            self._aged_at = now
            self._prune(now)
        yield from self.flush()
