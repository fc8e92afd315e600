"""Event subscriptions to the SMS for asyncio code (SSE clients, the admin page).

One DEALER carries every subscription of the gateway; each gets its own
request id, and ``Event`` messages are routed to its queue by that id. A
subscription re-subscribes from the last seq it delivered every
``resubscribe`` seconds, so a silent SMS restart (the DEALER reconnects,
the new SMS knows no subscribers) costs at most that long a gap; events seen
twice because of it are dropped by seq.

:class:`SubscriberLimit` bounds the open streams (events and live figures)
per key: a bearer token, or the client's address on an open gateway, so one
viewer cannot hold every slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import AsyncIterator

from .. import errors, protocol as P
from ..mesh import DealerPeer

log = logging.getLogger("spear.gateway")


class Overflow(Exception):
    """A subscriber fell too far behind; it should resume from its last seq."""


class EventSource:
    """All event subscriptions of one process over one connection to the SMS."""

    def __init__(self, sms: str, *, security=None, queue_size: int = 10_000,
                 resubscribe: float = 10.0) -> None:
        self.sms = sms
        self.queue_size = queue_size
        self.resubscribe = resubscribe
        self._peer = DealerPeer("gateway-events", on_message=self._on_message, security=security)
        self._queues: dict[int, asyncio.Queue] = {}
        self._started = False

    def _start(self) -> None:
        if not self._started:
            self._peer.connect(self.sms)
            self._peer.start()
            self._started = True

    def close(self) -> None:
        for q in self._queues.values():
            _offer(q, errors.Unavailable("gateway is stopping"))
        if self._started:
            self._peer.close()

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def _on_message(self, msg, payload) -> None:
        q = self._queues.get(getattr(msg, "id", 0))
        if q is None:
            return
        if isinstance(msg, P.Event):
            if q.full():
                self._queues.pop(msg.id, None)
                q.get_nowait()
                q.put_nowait(Overflow())
            else:
                q.put_nowait(msg)
        elif isinstance(msg, P.ErrorReply):
            _offer(q, errors.from_code(msg.code, msg.message))

    async def subscribe(self, since: int = 0) -> AsyncIterator[P.Event]:
        """Every event with ``seq > since``, forever; raises Overflow if it lags."""
        self._start()
        rid = self._peer.next_id()
        q: asyncio.Queue = asyncio.Queue(self.queue_size + 1)
        self._queues[rid] = q
        last = since
        self._peer.send(P.Subscribe(id=rid, since=since))
        try:
            while True:
                try:
                    item = await asyncio.wait_for(q.get(), self.resubscribe)
                except asyncio.TimeoutError:
                    self._peer.send(P.Subscribe(id=rid, since=last))
                    continue
                if isinstance(item, BaseException):
                    raise item
                if item.seq <= last and last:
                    continue  # a replay after re-subscribing
                last = item.seq
                yield item
        finally:
            self._queues.pop(rid, None)
            self._peer.send(P.Unsubscribe(id=rid))


def _offer(q: asyncio.Queue, item) -> None:
    try:
        q.put_nowait(item)
    except asyncio.QueueFull:
        q.get_nowait()
        q.put_nowait(item)


class SubscriberLimit:
    """Open streams per key, at most ``per_key`` each; :meth:`take` is the only way in."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._open: dict[str, int] = {}

    @staticmethod
    def key_of(token: str, client: str) -> str:
        """A bearer token's key (hashed: keys are logged and kept), else the client address."""
        if token:
            return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
        return "client:" + client

    def count(self, key: str) -> int:
        return self._open.get(key, 0)

    def take(self, key: str):
        """A release callable for one more stream of ``key``; ResourceExhausted when full."""
        n = self._open.get(key, 0)
        if n >= self.per_key:
            raise errors.ResourceExhausted(
                f"this client already has {n} open event streams (the limit per bearer token or "
                "client, [gateway] max_subscriptions_per_key); close one first")
        self._open[key] = n + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._open.get(key, 1) - 1
            if left > 0:
                self._open[key] = left
            else:
                self._open.pop(key, None)
        return release
