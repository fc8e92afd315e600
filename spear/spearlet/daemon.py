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

The node's state and rules are its :class:`SpearletCore`; the
:class:`Runner` drives it (runtimes, pools, execution tasks). This module
wires both to the sockets: client messages go to the Runner's handlers, SMS
pushes and heartbeat acks become core events, and the core's link
instructions (send a heartbeat, register again) are carried out here.
Results of executions the SMS dispatched are kept by the core until a
heartbeat's ack confirms them, so a result sent into a link that then
breaks still reaches the SMS once the node is registered again.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import time
import uuid
from pathlib import Path

import msgspec

from ..service import Service
from .. import __version__, errors, protocol as P
from ..config import Config
from ..fsmodes import private_dir, write_private
from ..metrics import SpearletMetrics
from ..mesh import DealerPeer, RouterServer, context
from ..mesh.endpoint import CLOSE_LINGER_MS
from ..mesh.security import Security, start_authenticator, warn_open
from ..runtimes import RuntimeManager
from ..tracing import Tracer
from .core import Maxima, SpearletCore
from .events import (CancelAsked, Dispatched, Drain, HeartbeatAcked, HeartbeatDue, RemoveAsked,
                     Reregister, SendHeartbeat, Welcomed)
from .results import ResultBuffer
from .runner import Runner
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
        self.metrics = SpearletMetrics()
        self.core = SpearletCore(self.node_id, max_concurrency=c.max_concurrency,
                                 maxima=Maxima.from_config(config), metrics=self.metrics)
        self.core.tracer = Tracer.from_config(config.tracing, "spear-spearlet", self.node_id)
        self.runner = Runner(self.runtime_manager, self.core, warming=c.warming)
        self.runner.reply = self.server.reply
        self.runner.to_sms = self.link.send
        self.runner.fetch = self._fetch_function
        self.runner.on_link = self._on_link_instruction
        self.handlers.update(self.runner.handlers())
        self.address = ""
        self.registered = asyncio.Event()
        self.heartbeat_interval = 1.0
        self.heartbeat_timeout = 5.0
        self.runtimes: list[str] = []
        self.unavailable: dict[str, str] = {}
        self._tasks: list[asyncio.Task] = []
        self._stopping: asyncio.Event | None = None
        self.reconnects = 0
        self._reregister = asyncio.Event()
        self._reregister_why = ""  # empty: the SMS did not know the session
        self.metrics.watch(self.runner, self.monitor, registered=self.registered.is_set,
                           reconnects=lambda: self.reconnects, results=self.results)
        self.metrics.watch_mesh({"router": self.server, "sms-link": self.link})

    @property
    def results(self) -> ResultBuffer:
        """Results sent to the SMS and not yet confirmed by it."""
        return self.core.results

    @property
    def running(self) -> int:
        return self.core.running

    @property
    def warm(self) -> int:
        return self.runner.warm

    # ---------------------------------------------------------------- direct

    def on_ping(self, ident, msg: P.Ping, payload):
        return P.Pong(id=msg.id, role="spearlet", node_id=self.node_id, version=__version__)

    def _on_sms_push(self, msg, payload) -> None:
        """Work and commands the SMS sends on its own initiative."""
        if isinstance(msg, P.Dispatch):
            self.runner.feed(Dispatched(msg, payload))
        elif isinstance(msg, P.CancelExecution):
            self.runner.feed(CancelAsked(msg))
        elif isinstance(msg, P.RemoveFunction):
            self.runner.feed(RemoveAsked(msg.name))
        else:
            log.debug("unexpected message from SMS: %s", type(msg).__name__)

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
            self.runner.feed(Welcomed(welcome.session))
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
        self.runner.feed(HeartbeatDue(self.link.next_id(),
                                      self.monitor.usage(running=self.running, warm=self.warm)))

    def _on_link_instruction(self, ins) -> None:
        """Carry out the core's link instructions (heartbeats, registering again)."""
        if isinstance(ins, SendHeartbeat):
            fut = self.link.request(ins.msg, timeout=self.heartbeat_timeout)
            fut.add_done_callback(lambda f: self._on_heartbeat_ack(f, ins.session, ins.seq))
        elif isinstance(ins, Reregister):
            self._reregister.set()

    def _on_heartbeat_ack(self, fut: asyncio.Future, session: int, seq: int) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        ack, _ = fut.result()
        self.runner.feed(HeartbeatAcked(ack, session, seq))

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
        self._tasks.append(asyncio.ensure_future(self.runner.evict_loop()))
        self._tasks.append(asyncio.ensure_future(self.runtime_manager.watch()))
        log.info("spearlet %s serving on %s, SMS %s", self.node_id, self.address,
                 self.config.spearlet.sms)
        return self.address

    async def close(self, *, deregister: bool = True) -> None:
        """Graceful stop: stop taking work, deregister, close sockets."""
        # stop taking work, let running executions finish (bounded), then stop
        self.runner.feed(Drain())
        deadline = time.monotonic() + self.config.spearlet.drain_timeout
        while self.core.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for t in self._tasks:
            t.cancel()
        await self.runner.close()  # cancelled executions still send their results
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
        await asyncio.to_thread(self.core.tracer.close)  # sends the spans still buffered
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the data directory's lock
            self._lock_fd = None
        log.info("spearlet %s stopped (pid %d)", self.node_id, os.getpid())
