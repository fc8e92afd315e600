"""Event log of the SMS: node and execution events with sequence numbers.

Subscribers get every event with ``seq > since``; the last ``keep`` events
are held in memory so a client that reconnects can resume where it left
off. The high-water mark is persisted so sequence numbers keep growing
across SMS restarts.
"""

from __future__ import annotations

import collections
from typing import Callable

from .. import protocol as P
from ..store import Store

SEQ_KEY = b"meta/event_seq"


class EventLog:
    """A bounded, resumable stream of :class:`spear.protocol.Event`."""

    def __init__(self, store: Store, send: Callable[[bytes, object], bool], keep: int = 10_000) -> None:
        self.store = store
        self.send = send
        raw = store.get(SEQ_KEY)
        self.seq = int(raw) if raw else 0
        self._saved = self.seq
        self.buffer: collections.deque[P.Event] = collections.deque(maxlen=keep)
        self.subscribers: dict[tuple[bytes, int], None] = {}

    def publish(self, kind: str, key: str, state: str, ts: float, detail: str = "") -> None:
        self.seq += 1
        ev = P.Event(id=0, seq=self.seq, kind="node" if kind == "node" else "execution",
                     key=key, state=state, ts=ts, detail=detail)
        self.buffer.append(ev)
        for ident, rid in list(self.subscribers):
            self.send(ident, P.Event(id=rid, seq=ev.seq, kind=ev.kind, key=key, state=state,
                                     ts=ts, detail=detail))
        if self.seq - self._saved >= 100:
            self.save()

    def save(self) -> None:
        if self.seq != self._saved:
            self.store.put(SEQ_KEY, str(self.seq).encode())
            self._saved = self.seq

    def subscribe(self, ident: bytes, rid: int, since: int) -> None:
        """Replay buffered events after ``since``, then stream new ones."""
        for ev in self.buffer:
            if ev.seq > since:
                self.send(ident, P.Event(id=rid, seq=ev.seq, kind=ev.kind, key=ev.key,
                                         state=ev.state, ts=ev.ts, detail=ev.detail))
        self.subscribers[(ident, rid)] = None

    def unsubscribe(self, ident: bytes, rid: int) -> None:
        self.subscribers.pop((ident, rid), None)
