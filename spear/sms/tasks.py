"""TaskService core: functions, executions, scheduling, dispatch, recovery.

No sockets, no clock: the driver passes ``now`` and an :class:`Outbox` that
delivers messages to nodes and clients. Tests drive it with a fake outbox.

Life of an execution submitted through the SMS::

    submit ─► pending ─(scheduler picks a node, reserves cpu/mem)─► scheduled
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
import hashlib
import heapq
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from .. import errors, protocol as P
from ..protocol import TERMINAL
from ..ids import new_id
from ..store import Store
from .scheduler import NodeTable

log = logging.getLogger("spear.sms.tasks")

FN_PREFIX = b"fn/"
ART_PREFIX = b"artifact/"
EX_PREFIX = b"ex/"
MiB = 1024 * 1024

_enc = msgspec.msgpack.Encoder()


class StoredFunction(msgspec.Struct, frozen=True, kw_only=True):
    """A registered function as persisted (artifact stored apart, by digest)."""

    spec: P.FunctionSpec
    digest: str
    artifact_digest: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


class StoredExecution(msgspec.Struct, frozen=True, kw_only=True):
    """An execution record as persisted."""

    info: P.ExecutionInfo
    output: bytes = b""
    retries: int = 0
    timeout: float | None = None
    input: bytes | None = None  # kept while not terminal, so a retry can run it
    failures: int = 0
    stream: bool = False
    #: the caller-scoped idempotency key it was submitted with ("" if none)
    idem: str = ""


class StoredCounts(msgspec.Struct, kw_only=True):
    """Lifetime counters, written in the same batch as the records they count."""

    counts: dict[str, int] = {}


COUNTS_KEY = b"meta/counts"
_dec_counts = msgspec.msgpack.Decoder(StoredCounts)


_dec_fn = msgspec.msgpack.Decoder(StoredFunction)
_dec_ex = msgspec.msgpack.Decoder(StoredExecution)


class Outbox(Protocol):
    """Where the core's messages go (the driver's sockets, or a test list)."""

    def to_node(self, node_id: str, msg: Any, payload: bytes | None = None) -> bool: ...

    def to_client(self, ident: bytes, msg: Any, payload: bytes | None = None) -> bool: ...


@dataclass
class Waiter:
    """A client waiting for an execution's terminal state."""

    ident: bytes
    rid: int
    deadline: float
    stream: bool = False


@dataclass
class Exec:
    """In-memory state of one execution."""

    info: P.ExecutionInfo
    data: bytes | None = b""  # None: the input was not kept (too large) - no retry possible
    output: bytes = b""
    timeout: float | None = None
    retries: int = 0
    waiters: list[Waiter] = field(default_factory=list)
    node: str = ""
    dispatch_id: int = 0
    dispatched_at: float = 0.0
    deadline: float = float("inf")  # dispatched: the node must have finished by then
    reserved: tuple[float, float] = (0.0, 0.0)
    excluded: set[str] = field(default_factory=set)
    #: every node this execution was dispatched to: only they may report on it
    sent_to: set[str] = field(default_factory=set)
    spills: int = 0
    failures: int = 0  # node losses (refusals are spills, not failures)
    queued_at: float = 0.0
    cancel_at: float = 0.0
    stream: bool = False
    idem: str = ""


@dataclass
class TaskSettings:
    """Knobs of the TaskService (from [sms] config)."""

    max_executions: int = 100_000
    #: finished executions older than this (seconds) are deleted
    retention_age: float = 7 * 86400.0
    #: finished executions kept whole in memory (the rest: an index entry, record on disk)
    cache_executions: int = 1_000
    max_queue: int = 10_000
    queue_timeout: float = 30.0
    max_spills: int = 5
    report_grace: float = 3.0
    keep_output: int = 64 * 1024  # outputs (and inputs) retained/persisted per record
    default_cpu: float = 0.0  # no CPU reservation unless limits.cpus asks; slots bound concurrency
    default_memory_mb: int = 16
    startup_grace: float = 5.0  # after a (re)start, wait this long for nodes to reattach
    #: run time assumed for executions without a timeout of their own (the nodes'
    #: maximum by default): the SMS-side deadline of a dispatched execution is its
    #: timeout plus ``deadline_grace`` (cold start, transfer, heartbeat delay)
    default_run_timeout: float = 3600.0
    deadline_grace: float = 5.0


class TaskService:
    """Function registry and execution manager of the SMS."""

    def __init__(self, store: Store, table: NodeTable, outbox: Outbox, *, now: float,
                 settings: TaskSettings | None = None, on_event=None) -> None:
        self.store = store
        self.table = table
        self.outbox = outbox
        self.s = settings or TaskSettings()
        self.on_event = on_event
        self.functions: dict[str, StoredFunction] = {}
        #: executions in flight, and the most recent finished ones, whole
        self.execs: collections.OrderedDict[str, Exec] = collections.OrderedDict()
        #: every other retained (finished) execution: a small index entry
        #: (submitted_at, function, status, node_id, idem); its record is on disk
        self.archive: collections.OrderedDict[str, tuple] = collections.OrderedDict()
        self.by_node: dict[str, set[str]] = collections.defaultdict(set)
        #: executions waiting for capacity: one FIFO per function
        self.queues: dict[str, collections.deque[str]] = {}
        self.queued = 0  # executions in all queues (entries of ended ones included)
        self.dirty: set[str] = set()
        self.pruned: list[bytes] = []  # keys of records dropped by retention, to delete
        self.watch: set[str] = set()  # executions with timed waiters or pending cancels
        self.counts: collections.Counter = collections.Counter()
        self.started_at = now
        #: until then, work no ready node can take waits in the queue instead of
        #: failing at once: nodes may be reattaching (after a start, or a stall)
        self.grace_until = now + self.s.startup_grace
        self._retrying = False
        self._dispatch_ids = iter(range(int.from_bytes(os.urandom(5), 'big') << 16, 1 << 63))
        #: caller-scoped idempotency key -> execution id
        self.by_idem: dict[str, str] = {}
        #: async submissions waiting for their group commit: (exec, client, request id)
        self.unacked: list[tuple[Exec, bytes, int]] = []
        self._aged_at = now
        self._load(now)

    # ------------------------------------------------------------------ load

    def _load(self, now: float) -> None:
        raw = self.store.get(COUNTS_KEY)
        if raw:
            try:
                self.counts.update(_dec_counts.decode(raw).counts)
            except msgspec.DecodeError:
                log.error("corrupt counters record: counting from zero")
        for key, raw in self.store.scan(FN_PREFIX):
            try:
                fn = _dec_fn.decode(raw)
            except msgspec.DecodeError:
                log.error("skipping corrupt function record %r", key)
                continue
            self.functions[fn.spec.name] = fn
        recovered = []
        for key, raw in self.store.scan(EX_PREFIX):
            try:
                st = _dec_ex.decode(raw)
            except msgspec.DecodeError:
                log.error("skipping corrupt execution record %r", key)
                continue
            i = st.info
            if st.idem:
                self.by_idem[st.idem] = i.execution_id
            if i.status in TERMINAL:  # only its index entry stays in memory
                self.archive[i.execution_id] = (i.submitted_at, i.function, i.status,
                                                i.node_id, st.idem)
                continue
            ex = Exec(info=st.info, output=st.output, retries=st.retries, timeout=st.timeout,
                      data=st.input, failures=st.failures, stream=st.stream, idem=st.idem)
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

    # ------------------------------------------------------------------ functions

    def register_function(self, spec: P.FunctionSpec, now: float) -> P.FunctionInfo:
        """Register or update a function; the artifact is stored once by content hash."""
        if spec.runtime == "wasm" and not spec.artifact:
            raise errors.InvalidArgument("a wasm function needs an artifact (.wasm or .wat bytes)")
        if spec.runtime == "process" and not (spec.command or spec.handler):
            raise errors.InvalidArgument("a process function needs a command or a handler")
        if spec.runtime == "docker" and not spec.image:
            raise errors.InvalidArgument("a docker function needs an image")
        P.check_secret_env(spec)
        art_digest = ""
        if spec.artifact is not None:
            art_digest = hashlib.sha256(spec.artifact).hexdigest()
            key = ART_PREFIX + art_digest.encode()
            if self.store.get(key) is None:
                self.store.put(key, spec.artifact, sync=True)
        bare = msgspec.structs.replace(spec, artifact=None)
        digest = hashlib.sha256(_enc.encode(bare) + art_digest.encode()).hexdigest()
        prev = self.functions.get(spec.name)
        fn = StoredFunction(spec=bare, digest=digest, artifact_digest=art_digest,
                            created_at=prev.created_at if prev else now, updated_at=now)
        self.store.put(FN_PREFIX + spec.name.encode(), _enc.encode(fn), sync=True)
        self.functions[spec.name] = fn
        if prev is not None and prev.digest != digest:
            self.table.forget_function(spec.name)  # nodes hold the old version
        self._event("function", spec.name, "registered", now, digest[:12])
        return self._fn_info(fn)

    def remove_function(self, name: str, now: float) -> None:
        if name not in self.functions:
            raise errors.NotFound(f"function {name!r} is not registered")
        self.store.delete(FN_PREFIX + name.encode(), sync=True)  # first: it may fail
        del self.functions[name]
        self.table.forget_function(name)
        self._event("function", name, "removed", now)

    def get_function(self, name: str) -> StoredFunction:
        fn = self.functions.get(name)
        if fn is None:
            raise errors.NotFound(f"function {name!r} is not registered")
        return fn

    def full_spec(self, name: str) -> tuple[P.FunctionSpec, str]:
        """The spec with its artifact bytes (for a node that lacks it)."""
        fn = self.get_function(name)
        spec = fn.spec
        if fn.artifact_digest:
            art = self.store.get(ART_PREFIX + fn.artifact_digest.encode())
            if art is None:
                raise errors.Internal(f"artifact {fn.artifact_digest} of {name} is missing")
            spec = msgspec.structs.replace(spec, artifact=art)
        return spec, fn.digest

    def _fn_info(self, fn: StoredFunction) -> P.FunctionInfo:
        return P.FunctionInfo(name=fn.spec.name, runtime=fn.spec.runtime, digest=fn.digest)

    def list_functions(self) -> list[P.FunctionInfo]:
        return [self._fn_info(f) for _, f in sorted(self.functions.items())]

    # ------------------------------------------------------------------ submit

    def submit(self, ident: bytes, msg: P.Invoke, payload, now: float, owner: str = "",
               eid: str | None = None):
        """Accept an invocation; returns the immediate reply, or None.

        Write-ahead order for ``async``: the execution is persisted (synced,
        one batch for all submissions of a loop pass: :meth:`commit`), then
        acknowledged, then dispatched; nothing is acknowledged or run if the
        write fails. ``sync``/``stream`` invocations are acknowledged by their
        result. ``idempotency_key`` (scoped to ``owner``, the caller's key):
        a repeated submission returns the first execution instead of a new one.
        ``eid``: the id to use (tests); by default a new UUIDv7. Clients never
        choose it: the daemon refuses ``Invoke.execution_id``.
        """
        fn = self.get_function(msg.function)
        idem = f"{owner}\x00{msg.idempotency_key}" if msg.idempotency_key else ""
        if idem:
            first = self.by_idem.get(idem)
            ex = self.find(first) if first is not None else None
            if ex is not None:
                return self._resubmitted(ex, ident, msg, now)
        store_error = getattr(self.store, "error", "")
        if store_error:
            raise errors.Unavailable(f"SMS storage is failing ({store_error}); "
                                     "new work is refused until writes succeed again")
        if self.queued >= self.s.max_queue:
            raise errors.ResourceExhausted(f"SMS queue is full ({self.s.max_queue} executions waiting)")
        eid = eid or new_id()
        if eid in self.execs or eid in self.archive:
            raise errors.InvalidArgument(f"execution id {eid!r} already exists")
        info = P.ExecutionInfo(execution_id=eid, function=fn.spec.name, status="pending",
                               trace_id=msg.trace_id or eid, submitted_at=now,
                               args=list(msg.args))
        ex = Exec(info=info, data=bytes(payload) if payload is not None else b"",
                  timeout=msg.timeout, retries=fn.spec.retries, stream=msg.mode == "stream",
                  idem=idem)
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

    def _place(self, ex: Exec, now: float, defer: list | None = None) -> None:
        """Dispatch a new execution, or queue it behind its function's queue."""
        name = ex.info.function
        if self.queues.get(name):
            self.retry_queue(now, function=name)
        if self.queues.get(name):  # earlier ones still wait: queue behind them
            self._enqueue(ex, now)
        else:
            self._schedule(ex, now, defer=defer)

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

    def commit(self, now: float) -> None:
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
        try:
            self.store.write_batch(puts, (), sync=True)
        except errors.SpearError as exc:
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

    def _deadline(self, ex: Exec, spec: P.FunctionSpec | None, now: float) -> float:
        """When a node must have finished ``ex`` dispatched at ``now`` (SMS-side)."""
        run = ex.timeout or (spec.limits.timeout if spec is not None else None)
        return now + (run or self.s.default_run_timeout) + self.s.deadline_grace

    def _need(self, spec: P.FunctionSpec) -> tuple[float, float]:
        cpu = spec.limits.cpus if spec.limits.cpus is not None else self.s.default_cpu
        mem = (spec.limits.memory_mb or self.s.default_memory_mb) * MiB
        return cpu, float(mem)

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
        picks = self.table.candidates(runtime=spec.runtime, labels=spec.labels,
                                      function=spec.name, cpu=cpu, mem=mem, k=1,
                                      exclude=ex.excluded or None)
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
        ex.reserved = (cpu, mem)
        self.table.take(node, cpu, mem)
        ex.dispatch_id = next(self._dispatch_ids)
        ex.dispatched_at = now
        ex.deadline = self._deadline(ex, spec, now)
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
            stream=ex.stream)
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

    def _unassign(self, ex: Exec) -> None:
        if ex.node:
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
        ex.info = msgspec.structs.replace(
            ex.info, node_id=node, error=info.error, exit_code=info.exit_code,
            timings=info.timings, usage=info.usage, cold=info.cold)
        self._end(ex, status, now, output=bytes(payload) if payload is not None else b"")

    def _from_its_node(self, ex: Exec, node: str, what: str) -> bool:
        """Only a node an execution was dispatched to may report on it."""
        if node in ex.sent_to:
            return True
        self.counts["forged_reports"] += 1
        log.warning("SECURITY: dropped a %s for execution %s from node %s, which it was "
                    "never dispatched to", what, ex.info.execution_id, node)
        return False

    def on_log(self, node: str, msg: P.LogChunk) -> None:
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
                continue
            if now - ex.dispatched_at > self.s.report_grace:
                self._node_failed(ex, now, f"node {node} no longer reports execution {eid}")

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

    def find(self, eid: str) -> Exec | None:
        """An execution, whole: from memory, or read back from its record."""
        ex = self.execs.get(eid)
        if ex is None and eid in self.archive:
            raw = self.store.get(EX_PREFIX + eid.encode())
            if raw is not None:
                st = _dec_ex.decode(raw)
                ex = Exec(info=st.info, output=st.output, retries=st.retries,
                          timeout=st.timeout, failures=st.failures, stream=st.stream, idem=st.idem)
        return ex

    def get(self, eid: str) -> Exec:
        ex = self.find(eid)
        if ex is None:
            raise errors.NotFound(f"execution {eid!r} not found")
        return ex

    def result_msg(self, ex: Exec, rid: int):
        return P.Result(id=rid, execution=ex.info), ex.output

    def wait(self, ident: bytes, msg: P.GetExecution, now: float):
        """Reply now if finished (or no wait asked), else register a waiter."""
        ex = self.get(msg.execution_id)
        if ex.info.status in TERMINAL or msg.wait <= 0:
            return self.result_msg(ex, msg.id)
        ex.waiters.append(Waiter(ident, msg.id, now + msg.wait))
        self.watch.add(ex.info.execution_id)
        return None

    def cancel(self, eid: str, now: float) -> None:
        ex = self.get(eid)
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

    def list_executions(self, msg: P.ListExecutions) -> tuple[list[P.ExecutionInfo], int]:
        """A page, newest first, over executions in memory and archived ones."""
        fn, status, node = msg.function, msg.status, msg.node_id
        live = ((ex.info.submitted_at, eid, ex) for eid, ex in reversed(self.execs.items()))
        old = ((e[0], eid, e) for eid, e in reversed(self.archive.items()))
        page: list[P.ExecutionInfo] = []
        total = 0
        for _, eid, item in heapq.merge(live, old, key=lambda t: t[0], reverse=True):
            if isinstance(item, Exec):
                i = item.info
                f, st, nd = i.function, i.status, i.node_id
            else:
                i = None
                _, f, st, nd, _ = item
            if (fn and f != fn) or (status and st != status) or (node and nd != node):
                continue
            if msg.offset <= total < msg.offset + msg.limit:
                if i is None:
                    ex = self.find(eid)
                    if ex is None:
                        continue
                    i = ex.info
                page.append(i)
            total += 1
        return page, total

    @property
    def queue(self) -> list[str]:
        """Every queued execution id, function by function (for inspection)."""
        return [eid for q in self.queues.values() for eid in q]

    def active(self) -> int:
        return sum(len(s) for s in self.by_node.values()) + self.queued

    # ------------------------------------------------------------------ endings

    def _end(self, ex: Exec, status: str, now: float, code: str = "", message: str = "",
             output: bytes = b"") -> None:
        self._unassign(ex)
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
        self._event("execution", ex.info.execution_id, status, now, ex.info.function)

    def _event(self, kind: str, key: str, state: str, now: float, detail: str = "") -> None:
        if self.on_event is not None:
            self.on_event(kind, key, state, now, detail)

    def _prune(self, now: float | None = None) -> None:
        """Retention: at most ``max_executions`` records, none finished longer ago
        than ``retention_age`` (with ``now``); the oldest finished go first."""
        excess = len(self.execs) + len(self.archive) - self.s.max_executions
        cutoff = now - self.s.retention_age if now is not None else None
        arch = self.archive
        while arch:
            eid, entry = next(iter(arch.items()))
            if excess <= 0 and (cutoff is None or entry[0] >= cutoff):
                break
            del arch[eid]
            self._drop(eid, entry[4])
            excess -= 1
        if excess <= 0 and cutoff is None:
            return
        dead = []
        for eid, ex in self.execs.items():
            old = cutoff is not None and ex.info.submitted_at < cutoff
            if len(dead) >= excess and not old:
                break
            if ex.info.status in TERMINAL and (len(dead) < excess or old):
                dead.append(eid)
        for eid in dead:
            ex = self.execs.pop(eid)
            self.dirty.discard(eid)
            self._drop(eid, ex.idem)

    def _drop(self, eid: str, idem: str) -> None:
        if idem and self.by_idem.get(idem) == eid:
            del self.by_idem[idem]
        # deleted with the next flush's batch, not one write per submission
        self.pruned.append(EX_PREFIX + eid.encode())

    def _evict(self) -> None:
        """Keep at most ``cache_executions`` finished executions whole in memory: the
        oldest finished (written, nobody waiting) become index entries."""
        excess = len(self.execs) - self.s.cache_executions
        if excess <= 0:
            return
        moved = []
        looked = 0
        for eid, ex in self.execs.items():
            if len(moved) >= excess or looked >= excess + 1024:
                break
            looked += 1
            i = ex.info
            if i.status in TERMINAL and eid not in self.dirty and not ex.waiters:
                moved.append((eid, (i.submitted_at, i.function, i.status, i.node_id, ex.idem)))
        for eid, entry in moved:
            del self.execs[eid]
            self.archive[eid] = entry

    # ------------------------------------------------------------------ upkeep

    def _enqueue(self, ex: Exec, now: float) -> None:
        ex.queued_at = now
        q = self.queues.get(ex.info.function)
        if q is None:
            q = self.queues[ex.info.function] = collections.deque()
        q.append(ex.info.execution_id)
        self.queued += 1

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

    def tick(self, now: float) -> None:
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
        self.flush()

    def _record(self, ex: Exec) -> tuple[bytes, bytes]:
        out = ex.output if len(ex.output) <= self.s.keep_output else b""
        inp = None
        if ex.info.status not in TERMINAL and ex.data is not None \
                and len(ex.data) <= self.s.keep_output:
            inp = ex.data
        return EX_PREFIX + ex.info.execution_id.encode(), _enc.encode(StoredExecution(
            info=ex.info, output=out, retries=ex.retries, timeout=ex.timeout, input=inp,
            failures=ex.failures, stream=ex.stream, idem=ex.idem))

    def flush(self, *, sync: bool = False) -> bool:
        """Write dirty execution records, deleted ones and the counters in one batch.

        Records stay dirty until the batch is written: after a failed write
        (the store turns read-only, see spear.store.guarded) they are written
        by the first flush that succeeds. Returns whether everything is written.
        """
        if not self.dirty and not self.pruned:
            return True
        written = list(self.dirty)
        puts = []
        for eid in written:
            ex = self.execs.get(eid)
            if ex is not None:
                puts.append(self._record(ex))
        puts.append((COUNTS_KEY, _enc.encode(StoredCounts(counts=dict(self.counts)))))
        deletes = list(self.pruned)
        try:
            self.store.write_batch(puts, deletes, sync=sync)
        except errors.SpearError as exc:
            log.debug("execution records not written yet: %s", exc)
            return False
        self.dirty.difference_update(written)
        del self.pruned[:len(deletes)]
        self._evict()
        return True
