"""The SMS core: ``SMSCore.handle(event, now) -> list[Instruction]``.

One state machine for the whole management service: node identities
(:mod:`.identity`), the node registry (:mod:`.nodes`), the scheduler's node
table (:mod:`.scheduler`), functions (:mod:`.functions`), executions
(:mod:`.executions`, :mod:`.placement`, :mod:`.records`) and event subscriptions
(:mod:`.subscriptions`). It owns no socket, no store, no clock and no task:
the daemon feeds it events (:mod:`.events`) with the time, and carries out
the instructions it returns, in order.

Durability: whatever the core acknowledges is on disk first. A handler that
must write yields a ``Persist`` and is parked until the daemon answers with
``Persisted``; only then does it go on to the reply (``Welcome``,
``Deployed``, ``Accepted``...). A failed write answers UNAVAILABLE and makes
the core read-only (new work refused) until a ``Tick`` says the store
recovered; what was kept in memory meanwhile is written then.
"""

from __future__ import annotations

import logging
from types import GeneratorType
from typing import Any, Callable, Generator

import msgspec

from .. import __version__, errors, protocol as P
from ..config import SMSConfig
from ..roles import redact_spec
from .events import (Commit, CommitSoon, Dropped, Event, Instruction, Loaded,
                     Persist, Persisted, Received, Send, Stopping, Tick, Undelivered, Upkeep,
                     unavailable_text)
from .executions import Executions
from .functions import FunctionRegistry
from .identity import NodeIdentity
from . import queries
from .nodes import NodeEvent, NodeRegistry
from .records import TaskSettings
from .recovery import Recovered
from .scheduler import NodeTable
from .subscriptions import EventLog

log = logging.getLogger("spear.sms")

#: a housekeeping tick this much later than asked is a stall of the SMS itself
STALL = 0.5


def task_settings(c: SMSConfig) -> TaskSettings:
    """The executions' knobs from the ``[sms]`` config section."""
    return TaskSettings(max_executions=c.max_executions, queue_timeout=c.queue_timeout,
                        retention_age=c.retention_age, cache_executions=c.cache_executions,
                        startup_grace=2 * c.heartbeat_timeout, deadline_grace=c.deadline_grace,
                        max_queue=c.max_queue, default_run_timeout=c.default_run_timeout,
                        placement=c.placement)


class SMSCore:
    """Nodes, functions, executions and scheduling, as state + event + ``now`` -> instructions.

    ``keyed``: CURVE is on (callers come with keys and roles); ``node_keys``:
    the operator's node id -> key bindings. ``metrics``: an optional
    :class:`spear.metrics.SMSMetrics` told of what happens (it does no I/O).
    """

    def __init__(self, config: SMSConfig, recovered: Recovered | None = None, *, now: float,
                 keyed: bool = False, node_keys: dict[str, str] | None = None,
                 settings: TaskSettings | None = None, metrics: Any = None) -> None:
        rec = recovered or Recovered()
        self.config = config
        self.metrics = metrics
        self.now = now
        self.out: list[Instruction] = []
        self._parked: dict[int, tuple[Generator, tuple | None, str]] = {}
        self._tokens = 0
        self._commit_soon = False
        #: node id -> when a heartbeat alone confirms its route again (see _unconfirm_routes)
        self.unconfirmed: dict[str, float] = {}
        self.identity = NodeIdentity(keyed, rec.nodekeys, node_keys)
        self.events = EventLog(self.to_client, rec.event_seq)
        self.table = NodeTable()
        self.registry = NodeRegistry(rec.nodes, heartbeat_timeout=config.heartbeat_timeout,
                                     cleanup_interval=config.cleanup_interval, now=now,
                                     on_event=self._on_node_event)
        for info in self.registry.nodes.values():
            self.table.upsert(info)
        self.fns = FunctionRegistry(self.table, rec.functions, on_event=self._on_task_event,
                                    artifacts_max=config.artifacts_max_mb << 20)
        self.tasks = Executions(self.table, self.fns, self, now=now,
                                settings=settings or task_settings(config),
                                on_event=self._on_task_event, records=rec.executions,
                                counts=rec.counts)
        self._handlers: dict[type, Callable] = {
            P.Ping: self._on_ping, P.Register: self._on_register, P.Heartbeat: self._on_heartbeat,
            P.Deregister: self._on_deregister, P.ListNodes: self._on_list_nodes,
            P.GetNode: self._on_get_node, P.DeployFunction: self._on_deploy,
            P.RemoveFunction: self._on_remove, P.ListFunctions: self._on_list_functions,
            P.GetFunction: self._on_get_function, P.FetchFunction: self._on_fetch_function,
            P.Invoke: self._on_invoke, P.GetExecution: self._on_get_execution,
            P.CancelExecution: self._on_cancel, P.ListExecutions: self._on_list_executions,
            P.Result: self._on_result, P.LogChunk: self._on_log_chunk,
            P.ErrorReply: self._on_node_error, P.Ok: lambda r: None,
            P.Subscribe: self._on_subscribe, P.Unsubscribe: self._on_unsubscribe,
            P.Stats: self._on_stats, P.DrainNode: self._on_drain,
        }

    @property
    def accepts(self) -> tuple[type, ...]:
        """The message types the core answers (the daemon routes exactly these to it)."""
        return tuple(self._handlers)

    @property
    def store_error(self) -> str:
        """Why writes fail ("" while they succeed): the core is read-only meanwhile."""
        return self.tasks.store_error

    # ---------------------------------------------------------------- driver

    def handle(self, event: Event, now: float) -> list[Instruction]:
        """Apply one event at time ``now``; the instructions to carry out, in order."""
        self.now = now
        match event:
            case Received():
                self._received(event)
            case Persisted(token=token, error=error):
                if error:
                    self.tasks.store_error = error
                self._resume(token, error)
            case Loaded(token=token, values=values):
                self._resume(token, list(values))
            case Commit():
                self._commit_soon = False
                self._run(self.tasks.commit(now), None, "commit of async submissions")
            case Tick():
                self._run(self._tick(event), None, "node tick")
            case Upkeep():
                self._run(self.tasks.tick(now), None, "task tick")
                self._run(self.registry.flush(), None, "node flush")
                if self.events.unsaved >= 1000:
                    self._run(self.events.save(), None, "event sequence save")
            case Undelivered(msg=msg):
                if isinstance(msg, P.Dispatch):
                    self.tasks.dispatch_failed(msg, now)
            case Stopping():
                self._run(self.tasks.flush(), None, "final flush")
                self._run(self.registry.flush(), None, "final node flush")
                self._run(self.events.save(), None, "event sequence save")
        out, self.out = self.out, []
        return out

    def _received(self, r: Received) -> None:
        handler = self._handlers.get(type(r.msg))
        if handler is None:
            return  # the daemon routes only the types in ``accepts``
        to = (r.ident, getattr(r.msg, "id", 0))
        try:
            out = handler(r)
        except Exception as exc:  # noqa: BLE001 - becomes a typed reply
            self._fail(to, exc, type(r.msg).__name__)
            return
        if type(out) is GeneratorType:
            self._run(out, to, type(r.msg).__name__)
        elif out is not None:
            self._reply(to, out)

    def _run(self, gen: Generator, to: tuple | None, what: str, value: Any = None) -> None:
        """Step ``gen`` until it finishes (reply to ``to``) or asks for the store (park it)."""
        try:
            req = gen.send(value)
        except StopIteration as stop:
            if to is not None and stop.value is not None:
                self._reply(to, stop.value)
            return
        except Exception as exc:  # noqa: BLE001 - a request's error becomes its reply
            if to is not None:
                self._fail(to, exc, what)
            elif isinstance(exc, errors.SpearError):
                log.warning("%s failed: %s", what, exc)
            else:
                log.exception("%s failed", what)  # never let housekeeping stop the SMS
            return
        self._tokens += 1
        self._parked[self._tokens] = (gen, to, what)
        self.out.append(msgspec.structs.replace(req, token=self._tokens))

    def _resume(self, token: int, value: Any) -> None:
        parked = self._parked.pop(token, None)
        if parked is not None:
            gen, to, what = parked
            self._run(gen, to, what, value)

    def _reply(self, to: tuple, out: Any) -> None:
        if isinstance(out, tuple):
            self.out.append(Send(to[0], out[0], out[1]))
        else:
            self.out.append(Send(to[0], out))

    def _fail(self, to: tuple, exc: BaseException, what: str) -> None:
        if not isinstance(exc, errors.SpearError):
            log.exception("handler for %s failed", what)
        self.out.append(Send(to[0], P.error_reply(to[1], exc)))

    # the executions' outbox: messages become Send instructions

    def to_node(self, node_id: str, msg: Any, payload: bytes | None = None) -> bool:
        """Send to a node at its route; False if it has none (never connected since
        this SMS started: it registers again)."""
        ident = self.identity.route.get(node_id)
        if ident is None:
            return False
        self.out.append(Send(ident, msg, payload))
        return True

    def to_client(self, ident: bytes, msg: Any, payload: bytes | None = None) -> bool:
        """Send to a client at routing id ``ident``."""
        self.out.append(Send(ident, msg, payload))
        return True

    # ---------------------------------------------------------------- housekeeping

    def _tick(self, ev: Tick) -> Generator[Persist, str, None]:
        """Node timeouts, stalls, penalties, orphaned work, store recovery."""
        now, lag = self.now, ev.lag
        if lag > STALL:
            # we were not listening: heartbeats queued meanwhile are not late,
            # and nobody is expired for silence we could not hear
            self.registry.stalled(now - lag, now)
            self._unconfirm_routes(lag, now)
            if self.metrics is not None:
                self.metrics.stalled(lag)
            log.warning("the SMS loop stalled for %.1fs (paused, GC or swap): node "
                        "timeouts do not count that time", lag)
        self.registry.tick(now)
        self.table.decay_penalties(now)
        tasks = self.tasks
        if now - tasks.started_at > tasks.s.startup_grace:
            # work recovered onto a node the registry no longer knows (its record
            # was lost or repaired away) would otherwise wait for it for good
            for node_id in [n for n in tasks.by_node if n not in self.registry.nodes]:
                if tasks.by_node[node_id]:
                    tasks.node_lost(node_id, now, "is not registered")
        was, tasks.store_error = tasks.store_error, ev.store_error
        if was and not ev.store_error:
            yield from tasks.flush(sync=True)  # what was kept in memory meanwhile
            yield from self.registry.flush()

    def _unconfirm_routes(self, lag: float, now: float) -> None:
        """After a stall long enough for nodes to have reset their links, no work
        goes to a node until it is heard on its live connection again: a Register
        (what a node that reset sends), or a heartbeat a full timeout after the
        stall (a node that did not reset). Work meanwhile waits in the queue."""
        timeout = self.config.heartbeat_timeout
        if lag < timeout / 2:
            return
        for info in self.registry.list("ready"):
            self.unconfirmed[info.node_id] = now + timeout
            self.table.set_state(info.node_id, "unconfirmed")
        self.tasks.grace_until = max(self.tasks.grace_until, now + 2 * timeout)

    def _confirm_route(self, node_id: str, now: float, registered: bool) -> None:
        until = self.unconfirmed.get(node_id)
        if until is None or not (registered or now >= until):
            return
        del self.unconfirmed[node_id]
        info = self.registry.nodes.get(node_id)
        if info is not None:
            self.table.set_state(node_id, info.state)
            self.tasks.retry_queue(now)

    def _on_node_event(self, ev: NodeEvent) -> None:
        if self.metrics is not None:
            self.metrics.node_event(ev.new)
        log.info("node %s: %s -> %s (%s)", ev.node_id, ev.old or "new", ev.new, ev.reason)
        now = self.now
        if ev.new == "gone":
            self.tasks.node_lost(ev.node_id, now, ev.reason)
            self.table.remove(ev.node_id)
            self.identity.detach(ev.node_id)
        else:
            self.table.set_state(ev.node_id, ev.new)
            if ev.new == "unhealthy":
                self.tasks.node_lost(ev.node_id, now, f"turned unhealthy: {ev.reason}")
        self.events.publish("node", ev.node_id, ev.new, now, ev.reason)

    def _on_task_event(self, kind: str, key: str, state: str, now: float, detail: str = "") -> None:
        self.events.publish(kind, key, state, now, detail)
        # self.tasks is unset while Executions.__init__ recovers records
        if kind == "execution" and self.metrics is not None and hasattr(self, "tasks"):
            self.metrics.execution_ended(self.tasks, key)
        elif kind == "function" and hasattr(self, "tasks"):
            # (re)deployed or removed: what was learned of its old code no longer holds
            self.tasks.models.forget(key)

    # ---------------------------------------------------------------- nodes

    def _on_ping(self, r: Received):
        return P.Pong(id=r.msg.id, role="sms", version=__version__)

    def _on_register(self, r: Received) -> Generator[Persist, str, None]:
        """Admit a node (identity first), answer Welcome, then place the work that waited."""
        msg = r.msg
        node = msg.node
        bind = self.identity.check(node.node_id, r.key, msg.proof)
        if bind is not None:
            # persisted before the Welcome: the binding survives a crash
            error = yield Persist((bind,), (), True)
            if error:
                raise errors.Unavailable(unavailable_text(error))
            self.identity.bind(node.node_id, bind[1].decode())
        self.identity.attach(r.ident, node.node_id)
        if self.identity.keyed:
            # clients learn a node's CURVE key from here: it is the key it spoke with
            node = msgspec.structs.replace(node, public_key=r.key)
        self._check_unique(node)
        now = self.now
        info = self.registry.register(node, now)
        self.table.upsert(info)
        self.unconfirmed.pop(info.node_id, None)  # heard on its live connection
        log.info("node %s (%s) registered from %s, runtimes %s",
                 info.node_id, info.name, info.address, ",".join(info.runtimes) or "none")
        c = self.config
        # the Welcome (and the session it starts) first, then the work that waited
        self.out.append(Send(r.ident, P.Welcome(
            id=msg.id, node_id=info.node_id, heartbeat_interval=c.heartbeat_interval,
            heartbeat_timeout=c.heartbeat_timeout, session=self.registry.session_of(info.node_id))))
        self.tasks.retry_queue(now)

    def _check_unique(self, node: P.NodeInfo) -> None:
        """A name or address held by another live node is not another node's to take:
        clients and the gateway find nodes by them."""
        for other in self.registry.nodes.values():
            if other.node_id == node.node_id or other.state not in ("ready", "draining"):
                continue
            for what in ("name", "address"):
                value = getattr(node, what)
                if value and value == getattr(other, what):
                    raise self.identity.refuse(f"node {node.node_id!r} may not register with "
                                               f"{what} {value!r}: live node {other.node_id!r} has it")

    def _on_heartbeat(self, r: Received):
        """Liveness, usage and the node's view of its executions; acks results it resends."""
        msg = r.msg
        if self.identity.speaker(r.ident, r.key, msg.node_id) is None:
            # not (or no longer) known on this connection: register first
            return P.HeartbeatAck(id=msg.id, known=False)
        now = self.now
        # a heartbeat of a stale or ended session changes nothing (see nodes.py)
        if not self.registry.heartbeat(msg.node_id, msg.usage, now, msg.session):
            return P.HeartbeatAck(id=msg.id, known=False)
        self.table.update_usage(self.registry.nodes[msg.node_id])
        if self.unconfirmed:
            self._confirm_route(msg.node_id, now, registered=False)
        if not msg.finished:
            self.tasks.on_running(msg.node_id, msg.running_ids, now)
            return P.HeartbeatAck(id=msg.id)
        # results the node sent and keeps until we confirm them: the ones we have
        # (or no longer know) are acked; the open ones it sends again, and until
        # then they count as running there (not lost)
        acked, resend = self._sort_finished(msg.finished)
        self.tasks.on_running(msg.node_id, msg.running_ids, now, finished=resend)
        return P.HeartbeatAck(id=msg.id, acked=acked, resend=resend)

    def _sort_finished(self, finished: list[str]) -> tuple[list[str], list[str]]:
        execs = self.tasks.execs
        dirty = self.tasks.dirty
        acked: list[str] = []
        resend: list[str] = []
        for eid in finished:
            ex = execs.get(eid)
            if eid in dirty:
                continue  # not on disk yet (or the store is read-only): the node keeps it
            if ex is None or ex.info.status in P.TERMINAL:
                acked.append(eid)
            else:
                resend.append(eid)
        return acked, resend

    def _on_deregister(self, r: Received):
        """A node leaving on purpose (only for itself)."""
        node_id = r.msg.node_id
        # a node speaks only for itself (see NodeIdentity)
        if self.identity.speaker(r.ident, r.key, node_id) is None:
            if node_id not in self.registry.nodes:
                raise errors.NotFound(f"node {node_id!r} is not registered")
            raise errors.PermissionDenied(f"node {node_id!r} is not registered from this peer")
        self.registry.deregister(node_id, self.now)
        log.info("node %s deregistered", node_id)
        return P.Ok(id=r.msg.id)

    def _on_list_nodes(self, r: Received):
        return P.NodeList(id=r.msg.id, nodes=self.registry.list(r.msg.state))

    def _on_get_node(self, r: Received):
        return P.NodeReply(id=r.msg.id, node=self.registry.get(r.msg.node_id))

    def _on_drain(self, r: Received):
        """An operator stops (or resumes) new work for a node; its running work goes on."""
        info = self.registry.drain(self.registry.get(r.msg.node_id).node_id, r.msg.drain, self.now)
        if not r.msg.drain:
            self.tasks.retry_queue(self.now)  # work that waited may go there now
        return P.NodeReply(id=r.msg.id, node=info)

    def _node_of(self, r: Received) -> str | None:
        """The registered node behind this message, or None (then it is dropped)."""
        node = self.identity.speaker(r.ident, r.key)
        if node is None or node not in self.registry.nodes:
            self.out.append(Dropped())
            return None
        return node

    # ---------------------------------------------------------------- functions

    def _on_deploy(self, r: Received):
        spec = r.msg.spec
        if r.payload is not None:
            spec = msgspec.structs.replace(spec, artifact=bytes(r.payload))
        info = yield from self.fns.register(spec, self.now)
        return P.Deployed(id=r.msg.id, function=info)

    def _on_remove(self, r: Received):
        yield from self.fns.remove(r.msg.name, self.now)
        for node_id in self.registry.nodes:
            self.to_node(node_id, P.RemoveFunction(id=0, name=r.msg.name))
        return P.Ok(id=r.msg.id)

    def _on_list_functions(self, r: Received):
        return P.FunctionList(id=r.msg.id, functions=self.fns.list())

    def _on_get_function(self, r: Received):
        fn = self.fns.get(r.msg.name)
        # env values only for deployer and up; secret ones for nobody (roles.redact_spec)
        return P.FunctionReply(id=r.msg.id, spec=redact_spec(fn.spec, r.role), digest=fn.digest)

    def _on_fetch_function(self, r: Received):
        """The whole spec and its artifact, for a node that lacks the version it must run."""
        # the whole spec (secret env values, artifact) goes to registered nodes only
        node = self.identity.speaker(r.ident, r.key)
        if node is None or node not in self.registry.nodes:
            raise errors.PermissionDenied("only a registered node may fetch a function's full spec")
        spec, digest = yield from self.fns.full_spec(r.msg.name)
        artifact = spec.artifact
        spec = msgspec.structs.replace(spec, artifact=None)
        return P.FunctionReply(id=r.msg.id, spec=spec, digest=digest), artifact

    # ---------------------------------------------------------------- executions

    def _on_invoke(self, r: Received):
        """A new execution (or the first one of its idempotency key)."""
        msg = r.msg
        # idempotency keys are scoped to the caller's key ("" on an open SMS)
        try:
            if msg.execution_id:
                raise errors.InvalidArgument("clients do not choose execution ids (they must be "
                                             "unguessable); pass idempotency_key to make retries safe")
            out = self.tasks.submit(r.ident, msg, r.payload, self.now, r.key)
        except errors.SpearError as exc:
            self._rejected(exc)
            raise
        if type(out) is GeneratorType:  # its key's first execution is read back first
            return self._invoked_later(out)
        self._invoked()
        return out

    def _invoked_later(self, submitted: Generator) -> Generator:
        try:
            out = yield from submitted
        except errors.SpearError as exc:
            self._rejected(exc)
            raise
        self._invoked()
        return out

    def _rejected(self, exc: errors.SpearError) -> None:
        if self.metrics is not None:
            self.metrics.rejected(exc.code)

    def _invoked(self) -> None:
        if self.tasks.unacked and not self._commit_soon:
            # one synced write for every async submission of this loop pass
            self._commit_soon = True
            self.out.append(CommitSoon())

    def _on_get_execution(self, r: Received):
        return (yield from self.tasks.wait(r.ident, r.msg, self.now))

    def _on_cancel(self, r: Received):
        yield from self.tasks.cancel(r.msg.execution_id, self.now)
        return P.Ok(id=r.msg.id)

    def _on_list_executions(self, r: Received):
        items, total, cursor = yield from self.tasks.list_executions(r.msg)
        return P.ExecutionList(id=r.msg.id, executions=items, total=total, next_cursor=cursor)

    def _on_result(self, r: Received):
        node = self._node_of(r)
        if node is not None:
            self.tasks.on_result(node, r.msg, r.payload, self.now)

    def _on_log_chunk(self, r: Received):
        node = self._node_of(r)
        if node is not None:
            self.tasks.on_log(node, r.msg)

    def _on_node_error(self, r: Received):
        node = self.identity.speaker(r.ident, r.key)
        if node is not None and node in self.registry.nodes and r.msg.id:
            if self.metrics is not None:
                self.metrics.dispatch_refused(r.msg.code)
            self.tasks.on_dispatch_error(node, r.msg, self.now)
        else:
            self.out.append(Dropped())

    # ---------------------------------------------------------------- subscriptions, stats

    def _on_subscribe(self, r: Received):
        # subscriptions are counted per key (per connection on an open SMS)
        owner = r.key if self.identity.keyed else r.ident
        self.events.subscribe(r.ident, r.msg.id, r.msg.since, owner=owner)

    def _on_unsubscribe(self, r: Received):
        self.events.unsubscribe(r.ident, r.msg.id)
        return P.Ok(id=r.msg.id)

    def _on_stats(self, r: Received):
        ready = self.registry.list("ready")
        cpu, mem = self.table.total_reserved()
        return P.StatsReply(
            id=r.msg.id, nodes_ready=len(ready),
            cores_total=sum(n.capacity.cores for n in ready),
            memory_total=sum(n.capacity.memory for n in ready),
            cores_reserved=round(cpu, 6), memory_reserved=int(mem),
            executions_active=self.tasks.active(), counts=dict(self.tasks.counts),
            functions=self._function_stats(r.msg) if r.msg.window else [],
            queued=self.tasks.queued, queued_cores=round(self.tasks.queued_cores(), 6))

    def _function_stats(self, msg: P.Stats) -> list[P.FunctionStat]:
        t = self.tasks
        return queries.function_stats(
            (ex.info for ex in reversed(t.execs.values())), reversed(t.archive.values()),
            now=self.now, window=msg.window, slices=msg.slices, function=msg.function)
