"""Execution records of the SMS: what is kept in memory, on disk, and for how long.

Executions in flight and the most recent finished ones are held whole
(:class:`Exec`); older finished ones are an index entry in ``archive``, their
record on disk, read back (a ``Load``) when asked for. Retention deletes the
oldest finished records beyond ``max_executions`` or older than
``retention_age``. Records are written in batches (:meth:`ExecutionRecords.flush`,
a ``Persist``) together with the lifetime counters, so the counters on disk
always match the records on disk.
"""

from __future__ import annotations

import collections
import heapq
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Generator, Protocol

import msgspec

from .. import errors, ids, protocol as P, tracing
from ..protocol import TERMINAL
from . import queries
from ..tracing import Tracer
from .events import Load, Persist
from .functions import FunctionRegistry
from .learned import CostModels
from .recovery import COUNTS_KEY, EX_PREFIX
from .scheduler import NodeTable

log = logging.getLogger("spear.sms.tasks")  # as spear.sms.executions

MiB = 1024 * 1024

_enc = msgspec.msgpack.Encoder()


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
    #: its W3C trace context (see :class:`Exec`)
    trace: str = ""
    parent: str = ""
    tracestate: str = ""


class StoredCounts(msgspec.Struct, kw_only=True):
    """Lifetime counters, written in the same batch as the records they count."""

    counts: dict[str, int] = {}


_dec_counts = msgspec.msgpack.Decoder(StoredCounts)
_dec_ex = msgspec.msgpack.Decoder(StoredExecution)


class Outbox(Protocol):
    """Where the executions' messages go: the core's ``Send`` instructions (a test list).

    ``to_node`` is False when the node cannot be reached (no route to it).
    """

    def to_node(self, node_id: str, msg: Any, payload: bytes | None = None) -> bool:
        """Send ``msg`` to a node; False if it cannot be reached."""

    def to_client(self, ident: bytes, msg: Any, payload: bytes | None = None) -> bool:
        """Send ``msg`` to the client at routing id ``ident``."""


@dataclass(slots=True)
class Waiter:
    """A client waiting for an execution's terminal state."""

    ident: bytes
    rid: int
    deadline: float
    stream: bool = False


@dataclass(slots=True)
class Exec:
    """In-memory state of one execution."""

    info: P.ExecutionInfo
    # Payloads are bytes, or (64 KiB and more) the zmq.Frame they arrived in,
    # sent on without a copy; bytes() only where they are persisted.
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
    #: the type of the node it was last dispatched to and that node's load per
    #: core then (what the cost models learn its run time against)
    placed_type: str = ""
    placed_load: float = 0.0
    excluded: set[str] = field(default_factory=set)
    #: every node this execution was dispatched to: only they may report on it
    sent_to: set[str] = field(default_factory=set)
    spills: int = 0
    failures: int = 0  # node losses (refusals are spills, not failures)
    queued_at: float = 0.0
    cancel_at: float = 0.0
    stream: bool = False
    idem: str = ""
    #: W3C context (:mod:`.spans`): the traceparent naming this execution's span,
    #: the caller's parent span id ("" if the trace starts here), its tracestate
    trace: str = ""
    parent: str = ""
    tracestate: str = ""
    span: str = ""  # the current attempt's dispatch span id (tracing on)


@dataclass
class TaskSettings:
    """Knobs of the executions (from [sms] config)."""

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
    #: scoring policy (``[sms] placement``): baseline, finish or pack
    placement: str = "baseline"



class ExecutionRecords:
    """The executions' state and records; :class:`spear.sms.executions.Executions`
    adds their life cycle."""

    def __init__(self, table: NodeTable, fns: FunctionRegistry, outbox: Outbox, *, now: float,
                 settings: TaskSettings | None = None, on_event=None) -> None:
        self.table = table
        self.fns = fns
        self.functions = fns.functions
        self.outbox = outbox
        self.s = settings or TaskSettings()
        #: learned run times and peak memory per function (read by "finish" and "pack")
        self.models = CostModels()
        self.on_event = on_event
        #: where spans go (the daemon sets it; off in tests of the core)
        self.tracer: Tracer = tracing.OFF
        #: why writes fail ("" while they succeed): new work is refused meanwhile
        self.store_error = ""
        #: executions in flight, and the most recent finished ones, whole
        self.execs: collections.OrderedDict[str, Exec] = collections.OrderedDict()
        #: every other retained (finished) execution: a small index entry
        #: (submitted_at, function, status, node_id, idem, finished_at, cold); its
        #: record is on disk
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

    def find(self, eid: str) -> Generator[Load, list, Exec | None]:
        """An execution, whole: from memory, or read back from its record."""
        ex = self.execs.get(eid)
        if ex is None and eid in self.archive:
            (raw,) = yield Load((EX_PREFIX + eid.encode(),))
            if raw is not None:
                st = _dec_ex.decode(raw)
                ex = Exec(info=st.info, output=st.output, retries=st.retries,
                          timeout=st.timeout, failures=st.failures, stream=st.stream, idem=st.idem,
                          trace=st.trace, parent=st.parent, tracestate=st.tracestate)
        return ex

    def get(self, eid: str) -> Generator[Load, list, Exec]:
        """An execution named by its id or a unique prefix of it (in memory or
        archived), whole; NOT_FOUND, or INVALID_ARGUMENT for a bad prefix."""
        eid = ids.resolve(eid, (self.execs, self.archive))
        ex = yield from self.find(eid)
        if ex is None:
            raise errors.NotFound(f"execution {eid!r} not found")
        return ex

    def result_msg(self, ex: Exec, rid: int):
        """The ``Result`` (and output frame) answering request ``rid`` about ``ex``."""
        return P.Result(id=rid, execution=ex.info), ex.output

    def wait(self, ident: bytes, msg: P.GetExecution, now: float) -> Generator[Load, list, object]:
        """Reply now if finished (or no wait asked), else register a waiter
        (one that gets the log chunks too if the request follows them)."""
        ex = yield from self.get(msg.execution_id)
        if ex.info.status in TERMINAL or msg.wait <= 0:
            return self.result_msg(ex, msg.id)
        ex.waiters.append(Waiter(ident, msg.id, now + msg.wait, stream=msg.follow))
        self.watch.add(ex.info.execution_id)
        return None

    def list_executions(self, msg: P.ListExecutions) -> Generator[Load, list, tuple[list, int, str]]:
        """A page, newest first, over executions in memory and archived ones:
        ``(records, how many matched, next page's cursor)`` (see :mod:`.queries`)."""
        match = queries.matcher(msg)
        after = queries.parse_cursor(msg.cursor)
        live = ((ex.info.submitted_at, eid, ex) for eid, ex in reversed(self.execs.items()))
        old = ((e[0], eid, e) for eid, e in reversed(self.archive.items()))
        page: list[P.ExecutionInfo] = []
        total = skipped = 0
        last = None
        for ts, eid, item in heapq.merge(live, old, key=lambda t: t[0], reverse=True):
            if isinstance(item, Exec):
                i = item.info
                f, st, nd = i.function, i.status, i.node_id
            else:
                i = None
                f, st, nd = item[1], item[2], item[3]
            if not match(eid, ts, f, st, nd):
                continue
            total += 1
            if after is not None and (ts, eid) >= after:
                continue  # on the pages before the cursor
            if msg.offset <= skipped < msg.offset + msg.limit:
                if i is None:
                    ex = yield from self.find(eid)
                    if ex is None:
                        continue
                    i = ex.info
                page.append(i)
                last = (ts, eid)
            skipped += 1
        more = last is not None and skipped > msg.offset + msg.limit
        return page, total, queries.cursor_of(*last) if more else ""

    @property
    def queue(self) -> list[str]:
        """Every queued execution id, function by function (for inspection)."""
        return [eid for q in self.queues.values() for eid in q]

    def active(self) -> int:
        """Executions dispatched or waiting in a queue."""
        return sum(len(s) for s in self.by_node.values()) + self.queued

    def _prune(self, now: float | None = None) -> None:
        """Retention: at most ``max_executions`` records, none finished longer ago
        than ``retention_age`` (with ``now``); the oldest finished go first."""
        excess = len(self.execs) + len(self.archive) - self.s.max_executions
        if excess <= 0 and now is None:
            return  # the usual case, once per submission
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
        oldest finished (written, nobody waiting) become index entries.

        Under load the oldest are nearly always evictable: they are popped off
        the front one by one; the first that is not (still running, unwritten,
        or waited on) is put back where it was and the rest are looked for
        past it.
        """
        excess = len(self.execs) - self.s.cache_executions
        if excess <= 0:
            return
        execs, archive, dirty = self.execs, self.archive, self.dirty
        while excess > 0:
            eid, ex = execs.popitem(last=False)
            i = ex.info
            if i.status not in TERMINAL or eid in dirty or ex.waiters:
                execs[eid] = ex
                execs.move_to_end(eid, last=False)
                break
            archive[eid] = queries.index_entry(i, ex.idem)
            excess -= 1
        if excess <= 0:
            return
        moved = []
        looked = 0
        for eid, ex in execs.items():
            if len(moved) >= excess or looked >= excess + 1024:
                break
            looked += 1
            i = ex.info
            if i.status in TERMINAL and eid not in dirty and not ex.waiters:
                moved.append((eid, queries.index_entry(i, ex.idem)))
        for eid, entry in moved:
            del execs[eid]
            archive[eid] = entry

    def _enqueue(self, ex: Exec, now: float) -> None:
        ex.queued_at = now
        q = self.queues.get(ex.info.function)
        if q is None:
            q = self.queues[ex.info.function] = collections.deque()
        q.append(ex.info.execution_id)
        self.queued += 1

    def _record(self, ex: Exec) -> tuple[bytes, bytes]:
        out = bytes(ex.output) if len(ex.output) <= self.s.keep_output else b""
        inp = None
        if ex.info.status not in TERMINAL and ex.data is not None \
                and len(ex.data) <= self.s.keep_output:
            inp = bytes(ex.data)
        return EX_PREFIX + ex.info.execution_id.encode(), _enc.encode(StoredExecution(
            info=ex.info, output=out, retries=ex.retries, timeout=ex.timeout, input=inp,
            failures=ex.failures, stream=ex.stream, idem=ex.idem, trace=ex.trace,
            parent=ex.parent, tracestate=ex.tracestate))

    def flush(self, *, sync: bool = False) -> Generator[Persist, str, bool]:
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
        error = yield Persist(puts, deletes, sync)
        if error:
            log.debug("execution records not written yet: %s", error)
            return False
        self.dirty.difference_update(written)
        del self.pruned[:len(deletes)]
        self._evict()
        return True
