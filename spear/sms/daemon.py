"""The SMS daemon: a thin asyncio driver around the service cores.

It owns the ROUTER socket and the store, feeds decoded messages and the
clock to the cores, and sends what they answer. The cores never touch a
socket.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from .. import __version__, errors, protocol as P
from ..config import Config
from ..mesh import RouterServer
from ..store import open_store
from .nodes import NodeEvent, NodeRegistry

log = logging.getLogger("spear.sms")


class SMS:
    """Spear Management Service: node registry (and, later, tasks)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        c = config.sms
        self.store = open_store(config.storage.backend, config.storage.path)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.registry = NodeRegistry(
            self.store,
            heartbeat_timeout=c.heartbeat_timeout,
            cleanup_interval=c.cleanup_interval,
            now=time.time(),
            on_event=self._on_node_event,
        )
        self.server = RouterServer("sms", {
            P.Ping: self.on_ping,
            P.Register: self.on_register,
            P.Heartbeat: self.on_heartbeat,
            P.Deregister: self.on_deregister,
            P.ListNodes: self.on_list_nodes,
            P.GetNode: self.on_get_node,
        })
        self.address = ""
        self._stopping: asyncio.Event | None = None
        self._ticker: asyncio.Task | None = None

    # ---------------------------------------------------------------- handlers

    def on_ping(self, ident, msg: P.Ping, payload):
        return P.Pong(id=msg.id, role="sms", version=__version__)

    def on_register(self, ident, msg: P.Register, payload):
        node = msg.node
        if ident != node.node_id.encode():
            # the routing id is how the SMS reaches the node: they must agree
            raise errors.InvalidArgument(
                f"routing id {ident!r} does not match node id {node.node_id!r}")
        info = self.registry.register(node, time.time())
        log.info("node %s (%s) registered from %s, runtimes %s",
                 info.node_id, info.name, info.address, ",".join(info.runtimes))
        c = self.config.sms
        return P.Welcome(id=msg.id, node_id=info.node_id,
                         heartbeat_interval=c.heartbeat_interval,
                         heartbeat_timeout=c.heartbeat_timeout)

    def on_heartbeat(self, ident, msg: P.Heartbeat, payload):
        known = self.registry.heartbeat(msg.node_id, msg.usage, time.time())
        return P.HeartbeatAck(id=msg.id, known=known)

    def on_deregister(self, ident, msg: P.Deregister, payload):
        self.registry.deregister(msg.node_id, time.time())
        log.info("node %s deregistered", msg.node_id)
        return P.Ok(id=msg.id)

    def on_list_nodes(self, ident, msg: P.ListNodes, payload):
        return P.NodeList(id=msg.id, nodes=self.registry.list(msg.state))

    def on_get_node(self, ident, msg: P.GetNode, payload):
        return P.NodeReply(id=msg.id, node=self.registry.get(msg.node_id))

    def _on_node_event(self, ev: NodeEvent) -> None:
        log.info("node %s: %s -> %s (%s)", ev.node_id, ev.old or "new", ev.new, ev.reason)

    # ---------------------------------------------------------------- lifecycle

    async def _tick_loop(self) -> None:
        period = min(self.config.sms.heartbeat_interval, self.config.sms.heartbeat_timeout / 4)
        while True:
            await asyncio.sleep(period)
            try:
                self.registry.tick(time.time())
            except Exception:  # never let housekeeping kill the daemon
                log.exception("tick failed")

    async def start(self) -> str:
        """Bind and start serving; returns the bound address."""
        self.loop = asyncio.get_running_loop()
        self.address = self.server.bind(self.config.sms.listen)
        self.server.start()
        self._ticker = asyncio.ensure_future(self._tick_loop())
        self._stopping = asyncio.Event()
        log.info("SMS listening on %s (store %s at %s)", self.address,
                 self.config.storage.backend, self.config.storage.path)
        return self.address

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def serve_forever(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):
                pass
        await self._stopping.wait()
        await self.close()

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self.server.close()
        self.store.close()
        log.info("SMS stopped")
