"""The node registry of the SMS core, as a state machine.

No sockets, no store and no clock of its own: every call takes ``now``, and
the records are written through a yielded ``Persist``. State lives in
memory for speed. Registrations, state changes and removals mark the node
*dirty*; :meth:`NodeRegistry.flush` (the core runs it every few tens of
milliseconds, and at shutdown) writes every dirty record in one batch, so a
registration storm of thousands of nodes costs a handful of writes, not one
synced write each. A crash loses at most the changes since the last flush:
the nodes concerned register again. Heartbeats alone are never written
(``last_seen`` and the usage figures are soft state, rebuilt by the next
heartbeat); a record written for another reason carries their latest values.

Sessions: every registration starts a new *session*, a random token the SMS
returns in ``Welcome`` and the node puts in every ``Heartbeat``. The session
ends when the node turns ``unhealthy`` (or registers again, or leaves). A
heartbeat counts only within the node's current session: one that carries
another token, or arrives after the session ended, changes nothing - no
``last_seen``, no usage, no state - and is answered ``known=False`` so that
connection registers again. That is what keeps a heartbeat that a dead
connection still delivers after a partition heals from turning the node
``ready`` (the SMS would then dispatch into that dead connection): an
unhealthy node is ready again only when it *registers*, over a live
connection. A heartbeat without a token (``session=0``: a peer older than
sessions, or an in-process caller) is checked the old way, by node id only.

States::

    register ─► ready ──(no heartbeat for heartbeat_timeout)──► unhealthy
      (draining instead of ready while an operator has drained the node)
                  ▲                                  (session ended)│
                  └───────────(register: a new session)─────────────┤
                                        (unhealthy for cleanup_interval)
                                                                   ▼
                                                        gone (removed)

(A legacy heartbeat without a session token still turns an unhealthy node
ready, as before sessions.)

On load after an SMS restart every stored node starts ``unhealthy`` with
``last_seen = now`` and no session: its next heartbeat is answered
``known=False``, it registers again and is ready; it is removed if it never
comes back.
"""

from __future__ import annotations

import collections

import logging
import os
from dataclasses import dataclass
from typing import Callable, Generator, Iterable

import msgspec

from .. import errors
from ..protocol import NodeInfo, Usage
from .events import Persist
from .recovery import NODE_PREFIX as PREFIX

log = logging.getLogger("spear.sms.nodes")

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(NodeInfo)


def new_session() -> int:
    """A fresh session token: random, non-zero, below 2**63 (0 means "none")."""
    return (int.from_bytes(os.urandom(8), "big") >> 1) or 1


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
        records: Iterable[tuple[bytes, bytes]] = (),
        *,
        heartbeat_timeout: float,
        cleanup_interval: float,
        now: float,
        on_event: Callable[[NodeEvent], None] | None = None,
        session_factory: Callable[[], int] = new_session,
    ) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.cleanup_interval = cleanup_interval
        self.on_event = on_event
        self.nodes: dict[str, NodeInfo] = {}
        self._unhealthy_since: dict[str, float] = {}
        #: recent spans (start, end) when the SMS itself was not listening (its
        #: loop stalled): silence from nodes then is not theirs (see tick)
        self.stalls: collections.deque[tuple[float, float]] = collections.deque(maxlen=64)
        #: node id -> token of its current session (none while unhealthy, or after a restart)
        self.sessions: dict[str, int] = {}
        self._new_session = session_factory
        #: node records to write (dirty) or delete (removed) at the next flush()
        self.dirty: set[str] = set()
        self.removed: set[str] = set()
        #: heartbeats refused because their session was stale or had ended
        self.stale_heartbeats = 0
        #: nodes an operator drained: ``draining`` instead of ``ready`` until undone
        self.drained: set[str] = set()
        for key, raw in records:
            try:
                info = _dec.decode(raw)
            except msgspec.DecodeError:
                log.error("skipping corrupt node record %r", key)
                continue
            if info.state == "draining":
                self.drained.add(info.node_id)
            info = msgspec.structs.replace(info, state="unhealthy", last_seen=now)
            self.nodes[info.node_id] = info
            self._unhealthy_since[info.node_id] = now

    # ---------------------------------------------------------------- helpers

    def _persist(self, info: NodeInfo) -> None:
        """Write ``info`` at the next flush."""
        self.dirty.add(info.node_id)
        self.removed.discard(info.node_id)

    def _remove(self, node_id: str) -> None:
        """Delete the node's record at the next flush."""
        self.removed.add(node_id)
        self.dirty.discard(node_id)
        self.sessions.pop(node_id, None)

    def flush(self) -> Generator[Persist, str, int]:
        """Write every dirty node record (and delete removed ones) in one batch.

        Returns the number of records written or deleted. A batch that deletes
        a record (a node that left or was removed) is synced; state flips and
        registrations are not (a crash loses at most the last flush interval,
        and those nodes register again). On a store error nothing is
        forgotten: the next flush tries again (and it returns 0).
        """
        if not self.dirty and not self.removed:
            return 0
        nodes = self.nodes
        puts = [(PREFIX + nid.encode(), _enc.encode(nodes[nid]))
                for nid in self.dirty if nid in nodes]
        deletes = [PREFIX + nid.encode() for nid in self.removed if nid not in nodes]
        dirty, removed = set(self.dirty), set(self.removed)
        if (yield Persist(puts, deletes, bool(deletes))):
            return 0
        self.dirty -= dirty
        self.removed -= removed
        return len(puts) + len(deletes)

    def _set_state(self, info: NodeInfo, state: str, now: float, reason: str) -> NodeInfo:
        old = info.state
        info = msgspec.structs.replace(info, state=state)
        self.nodes[info.node_id] = info
        if state == "unhealthy":
            self._unhealthy_since[info.node_id] = now
            # its connection may be dead: only a new registration starts a new session
            self.sessions.pop(info.node_id, None)
        else:
            self._unhealthy_since.pop(info.node_id, None)
        self._persist(info)
        if self.on_event is not None and old != state:
            self.on_event(NodeEvent(info.node_id, old, state, reason))
        return info

    # ---------------------------------------------------------------- commands

    def register(self, info: NodeInfo, now: float) -> NodeInfo:
        """Add or refresh a node; it is ready at once, in a new session
        (``self.sessions[node_id]``, which the driver returns in ``Welcome``)."""
        prev = self.nodes.get(info.node_id)
        state = self._up(info.node_id)
        info = msgspec.structs.replace(
            info,
            state=state,
            registered_at=prev.registered_at if prev else now,
            last_seen=now,
        )
        self.nodes[info.node_id] = info
        self._unhealthy_since.pop(info.node_id, None)
        self.sessions[info.node_id] = self._new_session()
        self._persist(info)
        if self.on_event is not None:
            self.on_event(NodeEvent(info.node_id, prev.state if prev else "", state, "registered"))
        return info

    def _up(self, node_id: str) -> str:
        """The state of a node that is alive: ready, unless an operator drained it."""
        return "draining" if node_id in self.drained else "ready"

    def drain(self, node_id: str, on: bool, now: float) -> NodeInfo:
        """Drain a node (no new work goes there) or undo it; a drained node stays
        draining when it registers again. An unhealthy node keeps its state."""
        info = self.nodes[node_id]
        if on:
            self.drained.add(node_id)
        else:
            self.drained.discard(node_id)
        if info.state in ("ready", "draining") and info.state != self._up(node_id):
            info = self._set_state(info, self._up(node_id), now,
                                   "drained by an operator" if on else "drain undone")
        return info

    def session_of(self, node_id: str) -> int:
        """The node's current session token (0: none - unknown, unhealthy or not yet registered)."""
        return self.sessions.get(node_id, 0)

    def heartbeat(self, node_id: str, usage: Usage, now: float, session: int = 0) -> bool:
        """Record a heartbeat; False if the node must register (again).

        False when the node is unknown, or - for a heartbeat that carries a
        session token - when that is not the node's current session (an older
        registration, or a session that ended when the node turned unhealthy).
        A refused heartbeat changes nothing. ``session=0`` (no token) is the
        legacy check by node id only, which also lets it revive an unhealthy node.
        """
        info = self.nodes.get(node_id)
        if info is None:
            return False
        if session and self.sessions.get(node_id) != session:
            self.stale_heartbeats += 1
            return False
        info = msgspec.structs.replace(info, usage=usage, last_seen=now)
        self.nodes[node_id] = info
        if info.state == "unhealthy":
            self._set_state(info, self._up(node_id), now, "heartbeat resumed")
        return True

    def deregister(self, node_id: str, now: float) -> NodeInfo:
        """Remove a node that leaves on purpose."""
        info = self.nodes.pop(node_id, None)
        if info is None:
            raise errors.NotFound(f"node {node_id!r} is not registered")
        self._unhealthy_since.pop(node_id, None)
        self._remove(node_id)
        if self.on_event is not None:
            self.on_event(NodeEvent(node_id, info.state, "gone", "deregistered"))
        return info

    def stalled(self, start: float, end: float) -> None:
        """The SMS was not listening from ``start`` to ``end`` (a pause of its loop:
        SIGSTOP, a long GC, a swapped host): heartbeats sent then wait unread."""
        if end > start:
            self.stalls.append((start, end))

    def _deaf(self, since: float, now: float) -> float:
        """Seconds between ``since`` and ``now`` during which the SMS was not listening."""
        return sum(max(0.0, min(e, now) - max(s, since)) for s, e in self.stalls)

    def tick(self, now: float) -> list[NodeEvent]:
        """Apply timeouts: ready -> unhealthy -> gone. Returns what changed.

        A node is dead when it missed heartbeats while the SMS was listening:
        time the SMS itself was stalled does not count against anyone.
        """
        events: list[NodeEvent] = []
        sink, self.on_event = self.on_event, events.append
        try:
            deadline = now - self.heartbeat_timeout
            for info in list(self.nodes.values()):
                if info.state in ("ready", "draining") and info.last_seen < deadline:
                    silent = now - info.last_seen - (self._deaf(info.last_seen, now)
                                                     if self.stalls else 0.0)
                    if silent > self.heartbeat_timeout:
                        self._set_state(info, "unhealthy", now, f"no heartbeat for {silent:.1f}s")
            cutoff = now - self.cleanup_interval
            for node_id, since in list(self._unhealthy_since.items()):
                if since <= cutoff and (not self.stalls
                                        or now - since - self._deaf(since, now) > self.cleanup_interval):
                    info = self.nodes.pop(node_id)
                    del self._unhealthy_since[node_id]
                    self.drained.discard(node_id)
                    self._remove(node_id)
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
        """Nodes by name (then id), only those in ``state`` if given."""
        nodes = sorted(self.nodes.values(), key=lambda n: (n.name, n.node_id))
        if state is not None:
            nodes = [n for n in nodes if n.state == state]
        return nodes
