"""The SMS daemon: a thin asyncio driver around the service cores.

It owns the ROUTER socket and the store, feeds decoded messages and the
clock to the cores (:class:`NodeRegistry`, :class:`TaskService`), and sends
what they answer. The cores never touch a socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import msgspec
import time

from ..service import Service
from .. import __version__, errors, protocol as P
from ..config import Config
from ..metrics import SMSMetrics
from ..mesh import RouterServer, context
from ..mesh.endpoint import CLOSE_LINGER_MS
from ..mesh.security import Security, start_authenticator, warn_open
from ..roles import redact_spec
from ..store import open_store
from ..store.guarded import GuardedStore
from .events import EventLog
from .nodes import NodeEvent, NodeRegistry
from .scheduler import NodeTable
from .tasks import TaskService, TaskSettings

log = logging.getLogger("spear.sms")


#: store keys: node id -> the public key (z85) it is bound to (CURVE)
NODEKEY_PREFIX = b"nodekey/"


class NodeIdentity:
    """Who a node is: the one place the SMS decides which node a peer speaks for.

    * With CURVE, a node id is bound to the public key that first registered
      it (persisted, so it holds across SMS restarts) or to the key given for
      it in ``[security] node_keys``; one key may hold one node id. A peer
      whose key is not bound to the node id it names is refused and logged.
    * The SMS reaches a node through the routing id of its last accepted
      message (routing ids are random per connection, never the node id), so
      knowing a node's id gives no way to receive its messages.
    * On an open cluster (no CURVE) there are no keys: a node id is bound
      instead to a hash of the ``proof`` secret its Spearlet keeps in its data
      directory, and a node is the connection it registered on.
    """

    def __init__(self, store, server: RouterServer, configured: dict[str, str]) -> None:
        self.store = store
        self.server = server
        self.key_of: dict[str, str] = {}
        for k, raw in store.scan(NODEKEY_PREFIX):
            self.key_of[k[len(NODEKEY_PREFIX):].decode()] = raw.decode()
        self.key_of.update(configured)  # the operator's word beats what was learned
        self.configured = dict(configured)
        self.node_of_key: dict[str, str] = {v: k for k, v in self.key_of.items()}
        self.route: dict[str, bytes] = {}  # node id -> routing id
        self.node_at: dict[bytes, str] = {}  # routing id -> node id
        self.refused = 0

    @property
    def keyed(self) -> bool:
        return self.server.security is not None

    def _refuse(self, why: str) -> errors.PermissionDenied:
        self.refused += 1
        log.warning("SECURITY: refused node message: %s", why)
        return errors.PermissionDenied(why)

    def _credential(self, proof: str) -> str:
        """What a node id is bound to: the caller's key, or a hash of its proof."""
        if self.keyed:
            return self.server.caller_key
        return "proof:" + hashlib.sha256(proof.encode()).hexdigest()[:32] if proof else ""

    def _bound(self, node_id: str) -> str | None:
        """The credential ``node_id`` is bound to in this mode (keys and proofs
        are kept apart, so switching CURVE on or off needs no reset)."""
        bound = self.key_of.get(node_id)
        if bound is None or bound.startswith("proof:") == self.keyed:
            return None
        return bound

    def register(self, ident: bytes, node_id: str, proof: str = "") -> None:
        """Admit ``ident`` as ``node_id`` (binding the credential on first sight) or raise."""
        cred = self._credential(proof)
        bound = self._bound(node_id)
        if bound is not None and bound != cred:
            who = f"key {cred[:12]}..." if self.keyed else "a peer without the node's proof"
            raise self._refuse(f"node id {node_id!r} is bound to another "
                               f"{'key' if self.keyed else 'node'}; {who} may not register as it")
        if self.keyed:
            other = self.node_of_key.get(cred)
            if other is not None and other != node_id and self._bound(other) == cred:
                raise self._refuse(f"key {cred[:12]}... is bound to node id {other!r}; "
                                   f"it may not register as {node_id!r}")
        if bound is None and cred:
            # persisted before the Welcome: the binding survives a crash
            self.store.put(NODEKEY_PREFIX + node_id.encode(), cred.encode(), sync=True)
            self.key_of[node_id] = cred
            self.node_of_key[cred] = node_id
            log.info("node id %s bound to %s", node_id,
                     f"key {cred[:12]}..." if self.keyed else "its proof")
        self._route(ident, node_id)

    def _route(self, ident: bytes, node_id: str) -> None:
        old = self.route.get(node_id)
        if old is not None and old != ident:
            self.node_at.pop(old, None)
        self.route[node_id] = ident
        self.node_at[ident] = node_id

    def speaker(self, ident: bytes, claimed: str | None = None) -> str | None:
        """The node behind the message being handled, or None if it is none.

        ``claimed``: the node id the message names; it must be the speaker's
        (PERMISSION_DENIED otherwise). None means the peer speaks for no node
        yet (an open cluster's node after an SMS restart: it re-registers).
        """
        if self.keyed:
            node = self.node_of_key.get(self.server.caller_key)
            if node is not None and self._bound(node) != self.server.caller_key:
                node = None  # a stale binding (the node id was re-keyed by configuration)
        else:
            node = self.node_at.get(ident)
        if claimed is not None and node is not None and node != claimed:
            raise self._refuse(f"peer {'key ' + self.server.caller_key[:12] + '...' if self.keyed else repr(ident)} "
                               f"may not act for node {claimed!r}")
        if node is not None and self.keyed and self.route.get(node) != ident:
            self._route(ident, node)  # the node reconnected: reach it where it speaks from
        return node

    def ident_of(self, node_id: str) -> bytes | None:
        return self.route.get(node_id)

    def forget(self, node_id: str) -> None:
        ident = self.route.pop(node_id, None)
        if ident is not None:
            self.node_at.pop(ident, None)


class _Outbox:
    """Delivers the TaskService's messages through the ROUTER."""

    def __init__(self, server: RouterServer, nodes: NodeIdentity) -> None:
        self.server = server
        self.nodes = nodes

    def to_node(self, node_id: str, msg, payload=None) -> bool:
        ident = self.nodes.route.get(node_id)
        if ident is None:
            return False  # never connected since this SMS started: it re-registers
        return self.server.reply(ident, msg, payload)

    def to_client(self, ident: bytes, msg, payload=None) -> bool:
        return self.server.reply(ident, msg, payload)


class SMS(Service):
    """Spear Management Service: nodes, functions, executions, scheduling."""

    def __init__(self, config: Config) -> None:
        self.config = config
        c = config.sms
        self.metrics = SMSMetrics()
        # every write goes through the guard: a failed one turns the SMS read-only
        # (new work refused with UNAVAILABLE) until a probe write succeeds again
        self.store = GuardedStore(open_store(config.storage.backend, config.storage.path))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.security = Security.from_config(config.security)
        self.server = RouterServer("sms", {}, security=self.security)
        self.nodes = NodeIdentity(self.store, self.server,
                                  self.security.node_keys if self.security.enabled else {})
        self.outbox = _Outbox(self.server, self.nodes)
        self.events = EventLog(self.store, lambda ident, ev: self.server.reply(ident, ev))
        self.table = NodeTable()
        now = time.time()
        self.registry = NodeRegistry(
            self.store,
            heartbeat_timeout=c.heartbeat_timeout,
            cleanup_interval=c.cleanup_interval,
            now=now,
            on_event=self._on_node_event,
        )
        for info in self.registry.nodes.values():
            self.table.upsert(info)
        self.tasks = TaskService(
            self.store, self.table, self.outbox, now=now,
            settings=TaskSettings(max_executions=c.max_executions, queue_timeout=c.queue_timeout,
                                  retention_age=c.retention_age,
                                  cache_executions=c.cache_executions,
                                  startup_grace=2 * c.heartbeat_timeout,
                                  deadline_grace=c.deadline_grace, max_queue=c.max_queue,
                                  default_run_timeout=c.default_run_timeout),
            on_event=self._on_task_event)
        self.server.handlers.update({
            P.Ping: self.on_ping,
            P.Register: self.on_register,
            P.Heartbeat: self.on_heartbeat,
            P.Deregister: self.on_deregister,
            P.ListNodes: self.on_list_nodes,
            P.GetNode: self.on_get_node,
            P.DeployFunction: self.on_deploy,
            P.RemoveFunction: self.on_remove,
            P.ListFunctions: self.on_list_functions,
            P.GetFunction: self.on_get_function,
            P.FetchFunction: self.on_fetch_function,
            P.Invoke: self.on_invoke,
            P.GetExecution: self.on_get_execution,
            P.CancelExecution: self.on_cancel,
            P.ListExecutions: self.on_list_executions,
            P.Result: self.on_result,
            P.LogChunk: self.on_log_chunk,
            P.ErrorReply: self.on_node_error,
            P.Ok: lambda ident, msg, payload: None,
            P.Subscribe: self.on_subscribe,
            P.Unsubscribe: self.on_unsubscribe,
            P.Stats: self.on_stats,
        })
        self.metrics.watch(self.tasks, self.registry, self.table)
        self.metrics.watch_mesh({"router": self.server})
        self.address = ""
        self._commit_soon = False
        #: node id -> when a heartbeat alone confirms its route again (see _unconfirm_routes)
        self.unconfirmed: dict[str, float] = {}
        self._stopping: asyncio.Event | None = None
        self._tickers: list[asyncio.Task] = []

    # ---------------------------------------------------------------- nodes

    def on_ping(self, ident, msg: P.Ping, payload):
        return P.Pong(id=msg.id, role="sms", version=__version__)

    def on_register(self, ident, msg: P.Register, payload):
        node = msg.node
        self.nodes.register(ident, node.node_id, msg.proof)
        if self.server.security is not None:
            # clients learn a node's CURVE key from here: it is the key it spoke with
            node = msgspec.structs.replace(node, public_key=self.server.caller_key)
        self._check_unique(node)
        now = time.time()
        was_known = node.node_id in self.registry.nodes
        info = self.registry.register(node, now)
        self.table.upsert(info)
        self.unconfirmed.pop(info.node_id, None)  # heard on its live connection
        if was_known:
            # a re-registering node restarted or reconnected: what it ran for us
            # before is reconciled by the running_ids of its heartbeats
            pass
        log.info("node %s (%s) registered from %s, runtimes %s",
                 info.node_id, info.name, info.address, ",".join(info.runtimes) or "none")
        c = self.config.sms
        # the Welcome (and the session it starts) first, then the work that waited
        self.server.reply(ident, P.Welcome(id=msg.id, node_id=info.node_id,
                                           heartbeat_interval=c.heartbeat_interval,
                                           heartbeat_timeout=c.heartbeat_timeout,
                                           session=self.registry.session_of(info.node_id)))
        self.tasks.retry_queue(now)
        return None

    def _check_unique(self, node: P.NodeInfo) -> None:
        """A name or address held by another live node is not another node's to take:
        clients and the gateway find nodes by them."""
        for other in self.registry.nodes.values():
            if other.node_id == node.node_id or other.state != "ready":
                continue
            for what in ("name", "address"):
                value = getattr(node, what)
                if value and value == getattr(other, what):
                    raise self.nodes._refuse(f"node {node.node_id!r} may not register with "
                                             f"{what} {value!r}: live node {other.node_id!r} has it")

    def _check_node(self, ident: bytes, node_id: str) -> None:
        # a node speaks only for itself (see NodeIdentity)
        if self.nodes.speaker(ident, node_id) is None:
            if node_id not in self.registry.nodes:
                raise errors.NotFound(f"node {node_id!r} is not registered")
            raise errors.PermissionDenied(f"node {node_id!r} is not registered from this peer")

    def on_heartbeat(self, ident, msg: P.Heartbeat, payload):
        if self.nodes.speaker(ident, msg.node_id) is None:
            # not (or no longer) known on this connection: register first
            return P.HeartbeatAck(id=msg.id, known=False)
        now = time.time()
        # a heartbeat of a stale or ended session changes nothing (see nodes.py)
        known = self.registry.heartbeat(msg.node_id, msg.usage, now, msg.session)
        if not known:
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

    def _unconfirm_routes(self, lag: float, now: float) -> None:
        """After a stall long enough for nodes to have reset their links, no work
        goes to a node until it is heard on its live connection again: a Register
        (what a node that reset sends), or a heartbeat a full timeout after the
        stall (a node that did not reset). Work meanwhile waits in the queue."""
        timeout = self.config.sms.heartbeat_timeout
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

    def _sort_finished(self, finished: list[str]) -> tuple[list[str], list[str]]:
        execs = self.tasks.execs
        acked: list[str] = []
        resend: list[str] = []
        dirty = self.tasks.dirty
        for eid in finished:
            ex = execs.get(eid)
            if eid in dirty:
                continue  # not on disk yet (or the store is read-only): the node keeps it
            if ex is None or ex.info.status in P.TERMINAL:
                acked.append(eid)
            else:
                resend.append(eid)
        return acked, resend

    def on_deregister(self, ident, msg: P.Deregister, payload):
        self._check_node(ident, msg.node_id)
        self.registry.deregister(msg.node_id, time.time())
        log.info("node %s deregistered", msg.node_id)
        return P.Ok(id=msg.id)

    def on_list_nodes(self, ident, msg: P.ListNodes, payload):
        return P.NodeList(id=msg.id, nodes=self.registry.list(msg.state))

    def on_get_node(self, ident, msg: P.GetNode, payload):
        return P.NodeReply(id=msg.id, node=self.registry.get(msg.node_id))

    def _on_node_event(self, ev: NodeEvent) -> None:
        self.metrics.node_event(ev.new)
        log.info("node %s: %s -> %s (%s)", ev.node_id, ev.old or "new", ev.new, ev.reason)
        now = time.time()
        if ev.new == "gone":
            self.tasks.node_lost(ev.node_id, now, ev.reason)
            self.table.remove(ev.node_id)
            self.nodes.forget(ev.node_id)
        else:
            self.table.set_state(ev.node_id, ev.new)
            if ev.new == "unhealthy":
                self.tasks.node_lost(ev.node_id, now, f"turned unhealthy: {ev.reason}")
        self.events.publish("node", ev.node_id, ev.new, now, ev.reason)

    # ---------------------------------------------------------------- functions

    def on_deploy(self, ident, msg: P.DeployFunction, payload):
        spec = msg.spec
        if payload is not None:
            spec = msgspec.structs.replace(spec, artifact=bytes(payload))
        return P.Deployed(id=msg.id, function=self.tasks.register_function(spec, time.time()))

    def on_remove(self, ident, msg: P.RemoveFunction, payload):
        self.tasks.remove_function(msg.name, time.time())
        for node_id in self.registry.nodes:
            self.outbox.to_node(node_id, P.RemoveFunction(id=0, name=msg.name))
        return P.Ok(id=msg.id)

    def on_list_functions(self, ident, msg: P.ListFunctions, payload):
        return P.FunctionList(id=msg.id, functions=self.tasks.list_functions())

    def on_get_function(self, ident, msg: P.GetFunction, payload):
        fn = self.tasks.get_function(msg.name)
        # env values only for deployer and up; secret ones for nobody (roles.redact_spec)
        role = self.server.caller_role if self.server.security is not None else ""
        return P.FunctionReply(id=msg.id, spec=redact_spec(fn.spec, role), digest=fn.digest)

    def on_fetch_function(self, ident, msg: P.FetchFunction, payload):
        # the whole spec (secret env values, artifact) goes to registered nodes only
        node = self.nodes.speaker(ident)
        if node is None or node not in self.registry.nodes:
            raise errors.PermissionDenied("only a registered node may fetch a function's full spec")
        spec, digest = self.tasks.full_spec(msg.name)
        artifact = spec.artifact
        spec = msgspec.structs.replace(spec, artifact=None)
        return P.FunctionReply(id=msg.id, spec=spec, digest=digest), artifact

    # ---------------------------------------------------------------- executions

    def on_invoke(self, ident, msg: P.Invoke, payload):
        # idempotency keys are scoped to the caller's key (its route when open)
        owner = self.server.caller_key if self.server.security is not None else ""
        try:
            if msg.execution_id:
                raise errors.InvalidArgument("clients do not choose execution ids (they must be "
                                             "unguessable); pass idempotency_key to make retries safe")
            out = self.tasks.submit(ident, msg, payload, time.time(), owner)
        except errors.SpearError as exc:
            self.metrics.rejected(exc.code)
            raise
        if self.tasks.unacked and not self._commit_soon:
            # one synced write for every async submission of this loop pass
            self._commit_soon = True
            asyncio.get_running_loop().call_soon(self._commit)
        return out

    def _commit(self) -> None:
        self._commit_soon = False
        try:
            self.tasks.commit(time.time())
        except Exception:  # never let the commit kill the daemon
            log.exception("commit of async submissions failed")

    def _on_task_event(self, kind: str, key: str, state: str, now: float, detail: str = "") -> None:
        self.events.publish(kind, key, state, now, detail)
        # self.tasks is unset while TaskService.__init__ recovers records
        if kind == "execution" and hasattr(self, "tasks"):
            self.metrics.execution_ended(self.tasks, key)

    def on_get_execution(self, ident, msg: P.GetExecution, payload):
        return self.tasks.wait(ident, msg, time.time())

    def on_cancel(self, ident, msg: P.CancelExecution, payload):
        self.tasks.cancel(msg.execution_id, time.time())
        return P.Ok(id=msg.id)

    def on_list_executions(self, ident, msg: P.ListExecutions, payload):
        items, total = self.tasks.list_executions(msg)
        return P.ExecutionList(id=msg.id, executions=items, total=total)

    def _node_of(self, ident: bytes) -> str | None:
        """The registered node behind this message, or None (then it is dropped)."""
        node = self.nodes.speaker(ident)
        if node is None or node not in self.registry.nodes:
            self.server.protocol_errors += 1
            return None
        return node

    def on_result(self, ident, msg: P.Result, payload):
        node = self._node_of(ident)
        if node is not None:
            self.tasks.on_result(node, msg, payload, time.time())

    def on_log_chunk(self, ident, msg: P.LogChunk, payload):
        node = self._node_of(ident)
        if node is not None:
            self.tasks.on_log(node, msg)

    def on_node_error(self, ident, msg: P.ErrorReply, payload):
        node = self.nodes.speaker(ident)
        if node is not None and node in self.registry.nodes and msg.id:
            self.metrics.dispatch_refused(msg.code)
            self.tasks.on_dispatch_error(node, msg, time.time())
        else:
            self.server.protocol_errors += 1

    def on_subscribe(self, ident, msg: P.Subscribe, payload):
        # subscriptions are counted per key (per connection on an open SMS)
        owner = self.server.caller_key if self.server.security is not None else ident
        self.events.subscribe(ident, msg.id, msg.since, owner=owner)

    def on_unsubscribe(self, ident, msg: P.Unsubscribe, payload):
        self.events.unsubscribe(ident, msg.id)
        return P.Ok(id=msg.id)

    def on_stats(self, ident, msg: P.Stats, payload):
        ready = self.registry.list("ready")
        cpu, mem = self.table.total_reserved()
        return P.StatsReply(
            id=msg.id, nodes_ready=len(ready),
            cores_total=sum(n.capacity.cores for n in ready),
            memory_total=sum(n.capacity.memory for n in ready),
            cores_reserved=round(cpu, 6), memory_reserved=int(mem),
            executions_active=self.tasks.active(), counts=dict(self.tasks.counts))

    # ---------------------------------------------------------------- lifecycle

    #: a loop pass this much later than asked is a stall of the SMS itself
    STALL = 0.5

    async def _tick_loop(self) -> None:
        period = min(self.config.sms.heartbeat_interval, self.config.sms.heartbeat_timeout / 4)
        last = time.monotonic()
        while True:
            await asyncio.sleep(period)
            try:
                now = time.time()
                mono = time.monotonic()
                lag = mono - last - period
                last = mono
                if lag > self.STALL:
                    # we were not listening: heartbeats queued meanwhile are not late,
                    # and nobody is expired for silence we could not hear
                    self.registry.stalled(now - lag, now)
                    self._unconfirm_routes(lag, now)
                    self.metrics.stalled(lag)
                    log.warning("the SMS loop stalled for %.1fs (paused, GC or swap): node "
                                "timeouts do not count that time", lag)
                self.registry.tick(now)
                self.table.decay_penalties(now)
                if now - self.tasks.started_at > self.tasks.s.startup_grace:
                    # work recovered onto a node the registry no longer knows (its record
                    # was lost or repaired away) would otherwise wait for it for good
                    for node_id in [n for n in self.tasks.by_node if n not in self.registry.nodes]:
                        if self.tasks.by_node[node_id]:
                            self.tasks.node_lost(node_id, now, "is not registered")
                if not self.store.healthy and self.store.probe():
                    self.tasks.flush(sync=True)  # what was kept in memory meanwhile
                    self.registry.flush()
            except Exception:  # never let housekeeping kill the daemon
                log.exception("node tick failed")

    async def _task_loop(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            try:
                self.tasks.tick(time.time())
            except Exception:
                log.exception("task tick failed")
            try:
                self.registry.flush()  # node records, batched like execution records
            except errors.SpearError:
                pass  # the store is read-only for now: kept dirty, written on recovery
            except Exception:
                log.exception("node flush failed")

    async def start(self) -> str:
        """Bind and start serving; returns the bound address."""
        self.loop = asyncio.get_running_loop()
        if self.security.enabled:
            start_authenticator(context(), self.security)
            log.info("CURVE on: %d authorized key(s)", len(self.security.roles))
        else:
            warn_open("SMS")
        self.address = self.server.bind(self.config.sms.listen)
        self.server.start()
        self._tickers = [asyncio.ensure_future(self._tick_loop()),
                         asyncio.ensure_future(self._task_loop())]
        self._stopping = asyncio.Event()
        if self.config.sms.metrics_port >= 0:
            srv = self.metrics.serve(self.config.sms.metrics_host, self.config.sms.metrics_port)
            log.info("metrics on %s", srv.url)
        log.info("SMS listening on %s (store %s at %s)", self.address,
                 self.config.storage.backend, self.config.storage.path)
        return self.address

    async def close(self) -> None:
        for t in self._tickers:
            t.cancel()
        await self.server.finish(timeout=0.5)
        self.server.close(linger_ms=CLOSE_LINGER_MS)
        self.tasks.flush()
        self.registry.flush()
        self.events.save()
        self.store.close()
        await asyncio.to_thread(self.metrics.close)
        log.info("SMS stopped")
