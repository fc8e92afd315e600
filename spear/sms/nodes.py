"""NodeService core: the node registry as a state machine.

No sockets and no clock of its own: every call takes ``now``. State lives in
memory for speed; registrations and state changes are written through to
the injected :class:`~spear.store.Store` (heartbeats are not: at 10,000
nodes per second that would be pointless disk churn; ``last_seen`` and the
usage figures are soft state, rebuilt by the next heartbeat).

States::

    register ─► ready ──(no heartbeat for heartbeat_timeout)──► unhealthy
                  ▲                                                │
                  └────────────(heartbeat or register)─────────────┤
                                        (unhealthy for cleanup_interval)
                                                                   ▼
                                                        gone (removed)

On load after an SMS restart every stored node starts ``unhealthy`` with
``last_seen = now``: it is ready again as soon as it heartbeats, and removed
if it never does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import msgspec

from .. import errors
from ..protocol import NodeInfo, Usage
from ..store import Store

log = logging.getLogger("spear.sms.nodes")

PREFIX = b"node/"
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(NodeInfo)


@dataclass(frozen=True)
class NodeEvent:
    """A state change the driver may log, publish or act on."""

    node_id: str
    old: str
    new: str
    reason: str


class NodeRegistry:
    """Registered nodes, their health and usage."""

    def __init__(
        self,
        store: Store,
        *,
        heartbeat_timeout: float,
        cleanup_interval: float,
        now: float,
        on_event: Callable[[NodeEvent], None] | None = None,
    ) -> None:
        self.store = store
        self.heartbeat_timeout = heartbeat_timeout
        self.cleanup_interval = cleanup_interval
        self.on_event = on_event
        self.nodes: dict[str, NodeInfo] = {}
        self._unhealthy_since: dict[str, float] = {}
        self.version = 0  # bumped on every change the scheduler cares about
        for key, raw in store.scan(PREFIX):
            try:
                info = _dec.decode(raw)
            except msgspec.DecodeError:
                log.error("skipping corrupt node record %r", key)
                continue
            info = msgspec.structs.replace(info, state="unhealthy", last_seen=now)
            self.nodes[info.node_id] = info
            self._unhealthy_since[info.node_id] = now

    # ---------------------------------------------------------------- helpers

    def _persist(self, info: NodeInfo) -> None:
        self.store.put(PREFIX + info.node_id.encode(), _enc.encode(info), sync=True)

    def _set_state(self, info: NodeInfo, state: str, now: float, reason: str) -> NodeInfo:
        old = info.state
        info = msgspec.structs.replace(info, state=state)
        self.nodes[info.node_id] = info
        if state == "unhealthy":
            self._unhealthy_since[info.node_id] = now
        else:
            self._unhealthy_since.pop(info.node_id, None)
        self._persist(info)
        self.version += 1
        if self.on_event is not None and old != state:
            self.on_event(NodeEvent(info.node_id, old, state, reason))
        return info

    # ---------------------------------------------------------------- commands

    def register(self, info: NodeInfo, now: float) -> NodeInfo:
        """Add or refresh a node; it is ready at once."""
        prev = self.nodes.get(info.node_id)
        info = msgspec.structs.replace(
            info,
            state="ready",
            registered_at=prev.registered_at if prev else now,
            last_seen=now,
        )
        self.nodes[info.node_id] = info
        self._unhealthy_since.pop(info.node_id, None)
        self._persist(info)
        self.version += 1
        if self.on_event is not None:
            self.on_event(NodeEvent(info.node_id, prev.state if prev else "", "ready", "registered"))
        return info

    def heartbeat(self, node_id: str, usage: Usage, now: float) -> bool:
        """Record a heartbeat; False if the node is unknown (it must register)."""
        info = self.nodes.get(node_id)
        if info is None:
            return False
        info = msgspec.structs.replace(info, usage=usage, last_seen=now)
        self.nodes[node_id] = info
        if info.state == "unhealthy":
            self._set_state(info, "ready", now, "heartbeat resumed")
        return True

    def deregister(self, node_id: str, now: float) -> NodeInfo:
        """Remove a node that leaves on purpose."""
        info = self.nodes.pop(node_id, None)
        if info is None:
            raise errors.NotFound(f"node {node_id!r} is not registered")
        self._unhealthy_since.pop(node_id, None)
        self.store.delete(PREFIX + node_id.encode(), sync=True)
        self.version += 1
        if self.on_event is not None:
            self.on_event(NodeEvent(node_id, info.state, "gone", "deregistered"))
        return info

    def tick(self, now: float) -> list[NodeEvent]:
        """Apply timeouts: ready -> unhealthy -> gone. Returns what changed."""
        events: list[NodeEvent] = []
        sink, self.on_event = self.on_event, events.append
        try:
            deadline = now - self.heartbeat_timeout
            for info in list(self.nodes.values()):
                if info.state in ("ready", "draining") and info.last_seen < deadline:
                    self._set_state(info, "unhealthy", now,
                                    f"no heartbeat for {now - info.last_seen:.1f}s")
            cutoff = now - self.cleanup_interval
            for node_id, since in list(self._unhealthy_since.items()):
                if since <= cutoff:
                    info = self.nodes.pop(node_id)
                    del self._unhealthy_since[node_id]
                    self.store.delete(PREFIX + node_id.encode(), sync=True)
                    self.version += 1
                    events.append(NodeEvent(node_id, info.state, "gone",
                                            f"unhealthy for {now - since:.1f}s"))
        finally:
            self.on_event = sink
        if sink is not None:
            for ev in events:
                sink(ev)
        return events

    # ---------------------------------------------------------------- queries

    def get(self, key: str) -> NodeInfo:
        """A node by id, or by name if no id matches."""
        info = self.nodes.get(key)
        if info is not None:
            return info
        for info in self.nodes.values():
            if info.name == key:
                return info
        raise errors.NotFound(f"node {key!r} not found")

    def list(self, state: str | None = None) -> list[NodeInfo]:
        nodes = sorted(self.nodes.values(), key=lambda n: (n.name, n.node_id))
        if state is not None:
            nodes = [n for n in nodes if n.state == state]
        return nodes
