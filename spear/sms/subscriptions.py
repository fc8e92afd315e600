"""Event subscriptions of the SMS core: node, function and execution events with
sequence numbers.

Subscribers get every event with ``seq > since``; the last ``keep`` events
are held in memory so a client that reconnects can resume where it left
off. The high-water mark is persisted (a yielded ``Persist``, see
:meth:`EventLog.save`) so sequence numbers keep growing across SMS restarts.
"""

from __future__ import annotations

import collections
from typing import Callable, Generator

from .. import protocol as P
from .events import Persist
from .recovery import SEQ_KEY


class EventLog:
    """A bounded, resumable stream of :class:`spear.protocol.Event`."""

    def __init__(self, send: Callable[[bytes, object], bool], seq: bytes | None = None,
                 keep: int = 10_000) -> None:
        self.send = send
        self.seq = int(seq) if seq else 0
        self._saved = self.seq
        # plain tuples (seq, kind, key, state, ts, detail): Structs are built only
        # for subscribers, which keeps publishing cheap on the execution hot path
        self.buffer: collections.deque[tuple] = collections.deque(maxlen=keep)
        #: (routing id, request id) -> owner (the caller's key; its routing id if open)
        self.subscribers: dict[tuple[bytes, int], object] = {}
        self.max_subscribers = 1024
        #: subscriptions one owner may hold; its oldest goes when it opens another
        self.max_per_owner = 16
        self._owned: collections.Counter = collections.Counter()

    def publish(self, kind: str, key: str, state: str, ts: float, detail: str = "") -> None:
        """Number an event, keep it for replays and send it to every subscriber."""
        self.seq += 1
        ev = (self.seq, kind if kind in ("node", "function") else "execution", key, state, ts, detail)
        self.buffer.append(ev)
        if self.subscribers:
            for ident, rid in list(self.subscribers):
                self.send(ident, self._event(rid, ev))

    @staticmethod
    def _event(rid: int, ev: tuple) -> P.Event:
        seq, kind, key, state, ts, detail = ev
        return P.Event(id=rid, seq=seq, kind=kind, key=key, state=state, ts=ts, detail=detail)

    @property
    def unsaved(self) -> int:
        """Events published since the high-water mark was last written."""
        return self.seq - self._saved

    def save(self) -> Generator[Persist, str, None]:
        """Write the high-water mark (unsynced; while the store is read-only: next time)."""
        if self.seq != self._saved:
            seq = self.seq
            if not (yield Persist(((SEQ_KEY, str(seq).encode()),))):
                self._saved = seq

    def subscribe(self, ident: bytes, rid: int, since: int, owner: object = None) -> None:
        """Replay buffered events after ``since``, then stream new ones.

        Slots are bounded per owner and in all. A peer that vanished never
        unsubscribes, so a full table drops an old subscription rather than
        refuse new ones, but never another owner's while this one is over
        its share: the oldest of this owner's goes first, and when the whole
        table is full, the oldest of whichever owner holds the most. One key
        can therefore never evict everyone else's subscriptions.
        """
        owner = ident if owner is None else owner
        for ev in self.buffer:
            if ev[0] > since:
                self.send(ident, self._event(rid, ev))
        if (ident, rid) in self.subscribers:
            return
        if self._owned[owner] >= self.max_per_owner:
            self._drop_oldest_of(owner)
        elif len(self.subscribers) >= self.max_subscribers:
            self._drop_oldest_of(self._owned.most_common(1)[0][0])
        self.subscribers[(ident, rid)] = owner
        self._owned[owner] += 1

    def _drop_oldest_of(self, owner: object) -> None:
        for sub, who in self.subscribers.items():
            if who == owner:
                self._remove(sub)
                return

    def _remove(self, sub: tuple[bytes, int]) -> None:
        if sub not in self.subscribers:
            return
        owner = self.subscribers.pop(sub)
        self._owned[owner] -= 1
        if self._owned[owner] <= 0:
            del self._owned[owner]

    def unsubscribe(self, ident: bytes, rid: int) -> None:
        """End the subscription ``rid`` of ``ident`` (if it still exists)."""
        if (ident, rid) in self.subscribers:
            self._remove((ident, rid))
