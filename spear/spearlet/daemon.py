"""The Spearlet daemon: one execution node.

Two sockets: a DEALER to the SMS (routing id = node id) for registration,
heartbeats and work, and a ROUTER for direct invocation by clients.

The link to the SMS is a small state machine::

    registering ──Welcome──► registered ──(SMS silent for its timeout)──┐
      ▲     ▲                     │ HeartbeatAck(known=False)           │
      │     └─────────────────────┘ (same socket: the link works)       │
      └──────────────────────────────────────── reconnect ◄─────────────┘

The SMS sets the heartbeat rate in its Welcome, so both sides agree on it,
and a session token that every heartbeat carries until the next Welcome.

Results of executions the SMS dispatched are kept (:class:`ResultBuffer`,
bounded) until the SMS confirms it has them: every heartbeat lists them in
``finished``, its ack says which the SMS has (forgotten here) and which it
lacks (sent again). So a result sent into a link that then breaks - the SMS
down, a partition, a socket reset - still reaches the SMS once the node is
registered again, and the SMS does not count the execution as vanished
meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import logging

import msgspec
import fcntl
import os
import socket
import time
import uuid
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..service import Service
from .. import __version__, errors, protocol as P
from ..config import Config
from ..fsmodes import private_dir, write_private
from ..metrics import SpearletMetrics
from ..mesh import DealerPeer, RouterServer, context
from ..mesh.endpoint import CLOSE_LINGER_MS
from ..mesh.security import Security, start_authenticator, warn_open
from ..runtimes import RuntimeManager
from .functions import FunctionService
from .resources import ResourceMonitor

log = logging.getLogger("spear.spearlet")


def _persisted(f: Path, make) -> str:
    """The value kept in file ``f`` of the data dir, else ``make()`` written there (0600)."""
    try:
        value = f.read_text().strip()
        if value:
            return value
    except OSError:
        pass
    value = make()
    f.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(f, (value + "\n").encode())
    return value


def _node_id(config: Config) -> str:
    """The configured node id, else one persisted in the data dir, else a new one."""
    c = config.spearlet
    if c.node_id:
        return c.node_id
    base = (c.name or socket.gethostname()).replace(" ", "-")[:48]
    return _persisted(Path(c.data) / "node_id", lambda: f"{base}-{uuid.uuid4().hex[:8]}")


def lock_data_dir(data: str) -> int:
    """Hold ``DATA/spearlet.lock`` for this process's life, or raise Unavailable.

    Two Spearlets in one data directory would share a node id and fight as
    one node; the second one refuses to start instead, naming the lock and
    the pid that holds it. The lock is an ``flock``: it goes with the process,
    even a killed one, so a stale lock file never blocks a restart.
    """
    path = Path(data) / "spearlet.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        except OSError:
            holder = "?"
        os.close(fd)
        raise errors.Unavailable(
            f"the Spearlet data directory {data} is in use by another Spearlet (pid {holder} "
            f"holds {path}); give each Spearlet its own directory: spear spearlet --data DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _node_proof(config: Config) -> str:
    """This node's registration secret, kept (0600) in its data directory.

    Without CURVE the SMS binds the node id to it, so no other peer can
    register under this node's id; with CURVE the key does that job.
    """
    return _persisted(Path(config.spearlet.data) / "node_proof", lambda: os.urandom(24).hex())


#: longest execution id a heartbeat may list (protocol.ExecIdList)
MAX_LISTED_ID = 128


class _Kept:
    __slots__ = ("msg", "payload", "size", "sent_seq")

    def __init__(self, msg, payload, size: int, sent_seq: int) -> None:
        self.msg = msg
        self.payload = payload
        self.size = size
        self.sent_seq = sent_seq


class ResultBuffer:
    """Results sent to the SMS and not yet confirmed by it, oldest first.

    Bounded by count and by bytes (output payloads included): beyond either
    bound the oldest is dropped, counted in ``dropped`` and logged (at most
    one warning a second). ``sent_seq`` orders sends against heartbeats: a
    result (re)sent after heartbeat H is not sent again because H's ack
    lists it as missing (the SMS answered H before that send reached it).
    """

    def __init__(self, max_results: int = 50_000, max_bytes: int = 256 << 20) -> None:
        self.max_results = max_results
        self.max_bytes = max_bytes
        self.items: collections.OrderedDict[str, _Kept] = collections.OrderedDict()
        self.bytes = 0
        self.dropped = 0
        self.seq = 0  # bumped by every (re)send and every heartbeat
        self._warned_at = float("-inf")

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, eid: str) -> bool:
        return eid in self.items

    def add(self, msg: P.Result, payload) -> None:
        """Keep ``msg`` (about to be sent) until the SMS confirms it."""
        eid = msg.execution.execution_id
        if len(eid) > MAX_LISTED_ID:
            return  # could not be listed in a heartbeat (the SMS never makes such ids)
        old = self.items.pop(eid, None)
        if old is not None:
            self.bytes -= old.size
        size = 256 + (len(payload) if payload is not None else 0)
        self.seq += 1
        self.items[eid] = _Kept(msg, payload, size, self.seq)
        self.bytes += size
        while self.items and (len(self.items) > self.max_results or self.bytes > self.max_bytes):
            old_id, old = self.items.popitem(last=False)
            self.bytes -= old.size
            self.dropped += 1
            now = time.monotonic()
            if now - self._warned_at >= 1.0:
                self._warned_at = now
                log.warning("dropped the result of execution %s: %d results (%d bytes) wait for "
                            "the SMS to confirm them, bounds %d / %d bytes (%d dropped so far)",
                            old_id, len(self.items), self.bytes, self.max_results,
                            self.max_bytes, self.dropped,
                            extra={"execution_id": old_id,
                                   "trace_id": old.msg.execution.trace_id})

    def mark(self) -> int:
        """A heartbeat is sent now: the sequence number its ack is judged by."""
        self.seq += 1
        return self.seq

    def pending(self, limit: int = 20_000, max_chars: int = 1 << 20) -> list[str]:
        """Ids to list in the next heartbeat: the oldest, bounded in count and size."""
        out: list[str] = []
        chars = 0
        for eid in self.items:
            if len(out) >= limit or chars > max_chars:
                break
            out.append(eid)
            chars += len(eid) + 2
        return out

    def ack(self, eids) -> None:
        for eid in eids:
            kept = self.items.pop(eid, None)
            if kept is not None:
                self.bytes -= kept.size

    def to_resend(self, eids, heartbeat_seq: int) -> list[_Kept]:
        """Of ``eids`` (the SMS lacks them as of the heartbeat ``heartbeat_seq``),
        the ones last sent before that heartbeat; marked as sent now."""
        out = []
        for eid in eids:
            kept = self.items.get(eid)
            if kept is not None and kept.sent_seq < heartbeat_seq:
                self.seq += 1
                kept.sent_seq = self.seq
                out.append(kept)
        return out

    def clear(self) -> None:
        self.items.clear()
        self.bytes = 0


class _ResultCollector:
    """Prometheus figures of the result buffer (read at scrape time)."""

    def __init__(self, buf: ResultBuffer) -> None:
        self.buf = buf

    def collect(self):
        kept = GaugeMetricFamily("spear_spearlet_results_unconfirmed",
                                 "Results of SMS executions sent and not yet confirmed by the SMS.")
        kept.add_metric((), len(self.buf))
        dropped = CounterMetricFamily(
            "spear_spearlet_results_dropped",
            "Unconfirmed results dropped because the buffer was full (bounds by count and bytes).")
        dropped.add_metric((), self.buf.dropped)
        return [kept, dropped]


class Spearlet(Service):
    """Registers with the SMS, heartbeats, serves direct invocations.

    ``config_file``: the TOML file ``config`` was read from, if any; like the
    data and key directories, its directory is never granted to functions.
    """

    def __init__(self, config: Config, *, config_file: str = "") -> None:
        self.config = config
        c = config.spearlet
        # 0700; what an older run (or another tool) left readable is fixed, loudly:
        # artifacts, caches and the node id are this node's alone
        private_dir(c.data, what="[spearlet] data")
        self._lock_fd = lock_data_dir(c.data)  # before anything in it is read or written
        self.node_id = _node_id(config)
        self.proof = _node_proof(config)
        self.name = c.name or self.node_id
        self.monitor = ResourceMonitor(c.data, slots=c.max_concurrency)
        self.security = Security.from_config(config.security)
        # the link's routing id is random (see DealerPeer): the SMS knows this
        # node by its key (CURVE) or by the route it registered on, never by a
        # routing id named after the public node id
        self.link = DealerPeer("spearlet->sms",
                               on_message=self._on_sms_push, security=self.security)
        self.handlers: dict[type, object] = {P.Ping: self.on_ping}
        self.server = RouterServer("spearlet", self.handlers, security=self.security)
        self.runtime_manager = RuntimeManager(config, c.data, self.node_id, config_file=config_file)
        self.functions = FunctionService(self.runtime_manager, self.node_id,
                                         max_concurrency=c.max_concurrency)
        self.functions.maxima = c
        self.functions.max_output_mb = config.runtimes.process.max_output_mb
        self.metrics = SpearletMetrics()
        self.functions.metrics = self.metrics
        self.handlers.update(self.functions.handlers(self.server))
        self.address = ""
        self.registered = asyncio.Event()
        self.heartbeat_interval = 1.0
        self.heartbeat_timeout = 5.0
        self.runtimes: list[str] = []
        self.unavailable: dict[str, str] = {}
        self._tasks: list[asyncio.Task] = []
        self._stopping: asyncio.Event | None = None
        self.reconnects = 0
        self._dispatches: set[asyncio.Task] = set()
        self.session = 0  # from the SMS's Welcome; every heartbeat carries it
        self._reregister = asyncio.Event()
        self._reregister_why = ""  # empty: the SMS did not know the session
        self.results = ResultBuffer()
        self.metrics.watch(self.functions, self.monitor, registered=self.registered.is_set,
                           reconnects=lambda: self.reconnects)
        self.metrics.watch_mesh({"router": self.server, "sms-link": self.link})
        self.metrics.registry.register(_ResultCollector(self.results))

    @property
    def running(self) -> int:
        return self.functions.running

    @property
    def warm(self) -> int:
        return self.functions.warm

    # ---------------------------------------------------------------- direct

    def on_ping(self, ident, msg: P.Ping, payload):
        return P.Pong(id=msg.id, role="spearlet", node_id=self.node_id, version=__version__)

    def _on_sms_push(self, msg, payload) -> None:
        """Work and commands the SMS sends on its own initiative."""
        if isinstance(msg, P.Dispatch):
            slot = self.functions.dispatch_now(msg, payload, self._send_to_sms)
            if slot is None:
                return  # answered inline
            task = asyncio.ensure_future(self.functions.run_dispatch(
                msg, payload, self._send_to_sms, self._fetch_function, slot))
            self._dispatches.add(task)
            task.add_done_callback(self._dispatches.discard)
        elif isinstance(msg, P.CancelExecution):
            ex = self.functions.executions.get(msg.execution_id)
            if ex is not None and ex.task is not None and not ex.done.is_set():
                ex.task.cancel()
        elif isinstance(msg, P.RemoveFunction):
            if msg.name in self.functions.deployments:
                asyncio.ensure_future(self.functions.remove(msg.name))
        else:
            log.debug("unexpected message from SMS: %s", type(msg).__name__)

    def _send_to_sms(self, msg, payload=None) -> bool:
        if type(msg) is P.Result:
            # kept until the SMS confirms it (heartbeat acks): the link may break
            # before it gets there, and then it is sent again
            self.results.add(msg, payload)
        return self.link.send(msg, payload)

    async def _fetch_function(self, name: str):
        reply, artifact = await self.link.request(
            P.FetchFunction(id=self.link.next_id(), name=name), timeout=30.0)
        spec = reply.spec
        if artifact is not None:
            spec = msgspec.structs.replace(spec, artifact=bytes(artifact))
        return spec, reply.digest

    # ---------------------------------------------------------------- SMS link

    def node_info(self) -> P.NodeInfo:
        return P.NodeInfo(
            node_id=self.node_id,
            name=self.name,
            address=self.config.spearlet.advertise or self.address,
            labels=dict(self.config.spearlet.labels),
            runtimes=list(self.runtimes),
            unavailable=dict(self.unavailable),
            capacity=self.monitor.capacity(),
            usage=self.monitor.usage(running=self.running, warm=self.warm),
            public_key=self.security.public_z85(),
        )

    async def _register(self) -> None:
        """Send Register until a Welcome arrives (bounded backoff)."""
        c = self.config.spearlet
        delay = c.reconnect_min
        while True:
            try:
                welcome, _ = await self.link.request(
                    P.Register(id=self.link.next_id(), node=self.node_info(), proof=self.proof),
                    timeout=max(delay, 0.5))
            except errors.SpearError as exc:
                log.debug("register failed: %s", exc)
                if isinstance(exc, errors.InvalidArgument):
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, c.reconnect_max)
                continue
            self.heartbeat_interval = welcome.heartbeat_interval
            self.heartbeat_timeout = welcome.heartbeat_timeout
            self.session = welcome.session
            self.registered.set()
            log.info("registered with SMS %s as %s (heartbeat %.2gs, timeout %.2gs)",
                     self.link.address, self.node_id, self.heartbeat_interval,
                     self.heartbeat_timeout)
            return

    async def _link_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._register()
            # a known=False that arrived meanwhile answered a heartbeat of the old session
            self._reregister.clear()
            self.link.last_heard = loop.time()
            # at once, not an interval later: results kept from before (the SMS was
            # down, the link was reset) are confirmed or sent again by its ack
            self._heartbeat()
            silent = False
            while True:
                try:
                    await asyncio.wait_for(self._reregister.wait(), self.heartbeat_interval)
                except asyncio.TimeoutError:
                    pass
                if self._reregister.is_set():
                    # the SMS answered: the link works, register again over it
                    log.info("%s: registering again",
                             self._reregister_why or "SMS does not know this node's session")
                    self._reregister_why = ""
                    break
                if loop.time() - self.link.last_heard > self.heartbeat_timeout:
                    log.warning("SMS silent for %.1fs: reconnecting",
                                loop.time() - self.link.last_heard)
                    silent = True
                    break
                self._heartbeat()
            self.registered.clear()
            if silent:
                self.reconnects += 1
                self.link.reconnect()

    def _heartbeat(self) -> None:
        hb = P.Heartbeat(id=self.link.next_id(), node_id=self.node_id,
                         usage=self.monitor.usage(running=self.running, warm=self.warm),
                         running_ids=list(self.functions.dispatched)[:50_000],
                         session=self.session, finished=self.results.pending())
        fut = self.link.request(hb, timeout=self.heartbeat_timeout)
        seq = self.results.mark()
        session = self.session
        fut.add_done_callback(lambda f: self._on_heartbeat_ack(f, session, seq))

    def _on_heartbeat_ack(self, fut: asyncio.Future, session: int = 0, seq: int = 0) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        ack, _ = fut.result()
        if not isinstance(ack, P.HeartbeatAck) or session != self.session:
            return  # the answer to a heartbeat of an earlier registration
        if not ack.known:
            self._reregister.set()
            return
        if ack.acked:
            self.results.ack(ack.acked)
        if ack.resend:
            for kept in self.results.to_resend(ack.resend, seq):
                log.info("sending the result of execution %s again",
                         kept.msg.execution.execution_id,
                         extra={"execution_id": kept.msg.execution.execution_id,
                                "trace_id": kept.msg.execution.trace_id})
                self.link.send(kept.msg, kept.payload)

    def _on_runtimes_changed(self) -> None:
        """A runtime turned on or off (the Docker engine came or went): the
        SMS learns it from a new registration, which carries the whole
        NodeInfo and makes the scheduler place queued work at once."""
        self.runtimes = sorted(self.runtime_manager.runtimes)
        self.unavailable = dict(self.runtime_manager.unavailable)
        log.info("runtimes now %s", ", ".join(self.runtimes) or "none")
        self._reregister_why = "runtimes changed"
        if self.registered.is_set():
            self._reregister.set()
        else:  # a Register under way may carry the old list: follow it with one more
            async def after_welcome() -> None:
                await self.registered.wait()
                self._reregister.set()

            self._tasks.append(asyncio.ensure_future(after_welcome()))

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> str:
        await self.runtime_manager.probe()
        self.runtimes = sorted(self.runtime_manager.runtimes)
        self.unavailable = dict(self.runtime_manager.unavailable)
        self.runtime_manager.on_change = self._on_runtimes_changed
        if self.security.enabled:
            start_authenticator(context(), self.security)
        else:
            warn_open("spearlet")
        self.address = self.server.bind(self.config.spearlet.listen)
        self.server.start()
        self.link.connect(self.config.spearlet.sms)
        self.link.start()
        self._stopping = asyncio.Event()
        c = self.config.spearlet
        if c.metrics_port >= 0:
            srv = self.metrics.serve(c.metrics_host, c.metrics_port)
            log.info("metrics on %s", srv.url)
        self._tasks.append(asyncio.ensure_future(self._link_loop()))
        self._tasks.append(asyncio.ensure_future(self.functions.evict_loop()))
        self._tasks.append(asyncio.ensure_future(self.runtime_manager.watch()))
        log.info("spearlet %s serving on %s, SMS %s", self.node_id, self.address,
                 self.config.spearlet.sms)
        return self.address

    async def close(self, *, deregister: bool = True) -> None:
        """Graceful stop: stop taking work, deregister, close sockets."""
        # stop taking work, let running executions finish (bounded), then stop
        self.functions.draining = True
        deadline = time.monotonic() + self.config.spearlet.drain_timeout
        while self.functions.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for t in self._tasks:
            t.cancel()
        await self.functions.close()
        await asyncio.sleep(0)  # let cancelled executions send their results
        # answer waits on executions that just ended, and give those replies time
        # to leave (a close with linger 0 would drop them with the socket)
        await self.server.finish(timeout=1.0)
        self.server.close(linger_ms=CLOSE_LINGER_MS)
        await self.runtime_manager.close()
        if deregister and self.registered.is_set():
            try:
                await self.link.request(P.Deregister(id=self.link.next_id(), node_id=self.node_id),
                                        timeout=1.0)
                log.info("deregistered from SMS")
            except errors.SpearError as exc:
                log.warning("could not deregister: %s", exc)
        self.link.close()
        await asyncio.to_thread(self.metrics.close)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the data directory's lock
            self._lock_fd = None
        log.info("spearlet %s stopped (pid %d)", self.node_id, os.getpid())
