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
        # plain tuples (seq, kind, key, state, ts, detail): Structs are built only
        # for subscribers, which keeps publishing cheap on the execution hot path
        self.buffer: collections.deque[tuple] = collections.deque(maxlen=keep)
        self.subscribers: dict[tuple[bytes, int], None] = {}
        self.max_subscribers = 1024

    def publish(self, kind: str, key: str, state: str, ts: float, detail: str = "") -> None:
        self.seq += 1
        ev = (self.seq, kind if kind in ("node", "function") else "execution", key, state, ts, detail)
        self.buffer.append(ev)
        if self.subscribers:
            for ident, rid in list(self.subscribers):
                self.send(ident, self._event(rid, ev))
        if self.seq - self._saved >= 1000:
            self.save()

    @staticmethod
    def _event(rid: int, ev: tuple) -> P.Event:
        seq, kind, key, state, ts, detail = ev
        return P.Event(id=rid, seq=seq, kind=kind, key=key, state=state, ts=ts, detail=detail)

    def save(self) -> None:
        if self.seq != self._saved:
            self.store.put(SEQ_KEY, str(self.seq).encode())
            self._saved = self.seq

    def subscribe(self, ident: bytes, rid: int, since: int) -> None:
        """Replay buffered events after ``since``, then stream new ones."""
        for ev in self.buffer:
            if ev[0] > since:
                self.send(ident, self._event(rid, ev))
        if len(self.subscribers) >= self.max_subscribers:
            # a peer that vanished never unsubscribes: drop the oldest subscription
            del self.subscribers[next(iter(self.subscribers))]
        self.subscribers[(ident, rid)] = None

    def unsubscribe(self, ident: bytes, rid: int) -> None:
        self.subscribers.pop((ident, rid), None)
