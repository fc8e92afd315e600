"""A DEALER peer: requests with ids, replies matched to futures.

Used by :class:`spear.AsyncClient` and by the Spearlet's link to the SMS.
Every request gets a fresh id; the reply (or an ``ErrorReply``, rebuilt as
the matching :mod:`spear.errors` class) resolves its future. Messages that
match no pending request go to ``on_message`` (e.g. SMS -> node pushes).
A streaming request registers a callback that sees every message with its
id until the final one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, Callable

import zmq

from .. import errors, protocol
from .endpoint import Endpoint, random_routing_id

log = logging.getLogger("spear.mesh")


class _Pending:
    __slots__ = ("future", "deadline", "timeout", "on_item")

    def __init__(self, future, deadline, timeout, on_item=None):
        self.future = future
        self.deadline = deadline
        self.timeout = timeout
        self.on_item = on_item


#: how often expired requests are swept (one timer per peer, not one per request)
SWEEP = 0.05


class DealerPeer:
    """One DEALER connection to a ROUTER, with request/reply bookkeeping."""

    def __init__(
        self,
        name: str = "peer",
        *,
        on_message: Callable[[Any, Any], None] | None = None,
        identity: bytes | None = None,
        security=None,
        server_key: bytes | None = None,
    ) -> None:
        self.name = name
        self.security = security
        self.server_key = server_key
        self.on_message = on_message
        # None: a fresh unguessable routing id for each socket. Not one kept across
        # reconnect(): without ROUTER handover the SMS would set a new connection
        # with the id of one it still thinks alive aside, unread. The SMS reaches a
        # node at the route it last heard it on (see sms.identity.NodeIdentity).
        self.identity = identity
        self.address: str | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.protocol_errors = 0
        self.last_heard = 0.0
        self.endpoint = self._new_endpoint()

    def _new_endpoint(self) -> Endpoint:
        ep = Endpoint(zmq.DEALER, self._on_frames, name=self.name)
        # routes are never named after anything a peer could know (node ids are public)
        ep.sock.setsockopt(zmq.ROUTING_ID, self.identity or random_routing_id())
        if self.security is not None:
            self.security.connect_to(ep.sock, self.server_key)
        # a node started with (or before) its SMS is refused until the SMS listens:
        # retry soon at first (the wait is added to the node's start), then back off
        ep.sock.setsockopt(zmq.RECONNECT_IVL, 10)
        ep.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        return ep

    def connect(self, addr: str) -> None:
        self.address = addr
        self.endpoint.connect(addr)

    def start(self) -> None:
        self.endpoint.start()

    def reconnect(self) -> None:
        """Drop the socket and open a new one to the same address.

        Requests in flight fail with UNAVAILABLE: their replies can't arrive.
        """
        loop = self.endpoint.loop
        self.endpoint.close()
        self._fail_all(errors.Unavailable(f"{self.name}: connection reset"))
        self.endpoint = self._new_endpoint()
        if self.address:
            self.endpoint.connect(self.address)
        if loop is not None:
            self.endpoint.start(loop)

    def close(self) -> None:
        self._fail_all(errors.Unavailable(f"{self.name}: closed"))
        self.endpoint.close()

    def _fail_all(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for p in pending.values():
            if not p.future.done():
                p.future.set_exception(exc)

    # ------------------------------------------------------------- sending

    def next_id(self) -> int:
        return next(self._ids)

    def send(self, msg: Any, payload: bytes | None = None) -> bool:
        return self.endpoint.send(protocol.encode(msg, payload))

    def request(
        self,
        msg: Any,
        payload: bytes | None = None,
        *,
        timeout: float | None = 10.0,
        on_item: Callable[[Any, Any], None] | None = None,
    ) -> asyncio.Future:
        """Send ``msg`` and return a future for ``(reply, payload)``.

        ``on_item``: for streams, called with every non-final message of this
        exchange (``LogChunk``); the future resolves on the final one.
        """
        loop = self.endpoint.loop or asyncio.get_running_loop()
        fut = loop.create_future()
        rid = msg.id
        deadline = loop.time() + timeout if timeout is not None else float("inf")
        self._pending[rid] = _Pending(fut, deadline, timeout, on_item)
        if timeout is not None and self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP, self._sweep)
        if not self.send(msg, payload):
            self._pending.pop(rid, None)
            fut.set_exception(errors.ResourceExhausted(f"{self.name}: send queue full"))
        return fut

    def _sweep(self) -> None:
        """Fail requests past their deadline; re-arm while any are pending."""
        self._sweeper = None
        loop = self.endpoint.loop
        if loop is None:
            return
        now = loop.time()
        expired = [rid for rid, p in self._pending.items() if p.deadline <= now]
        for rid in expired:
            p = self._pending.pop(rid)
            if not p.future.done():
                p.future.set_exception(errors.DeadlineExceeded(
                    f"no reply from {self.address} within {p.timeout:g}s"))
        if any(p.timeout is not None for p in self._pending.values()):
            self._sweeper = loop.call_later(SWEEP, self._sweep)

    def forget(self, rid: int) -> None:
        """Stop waiting for ``rid`` (the caller gave up)."""
        self._pending.pop(rid, None)

    # ------------------------------------------------------------- receiving

    def _on_frames(self, frames: list) -> None:
        try:
            msg, payload = protocol.decode(frames)
        except errors.ProtocolError as exc:
            self.protocol_errors += 1
            log.debug("%s: dropped bad frames: %s", self.name, exc)
            return
        loop = self.endpoint.loop
        if loop is not None:
            self.last_heard = loop.time()
        rid = getattr(msg, "id", 0)
        p = self._pending.get(rid)
        if p is None:
            if self.on_message is not None:
                self.on_message(msg, payload)
            return
        if p.on_item is not None and isinstance(msg, protocol.LogChunk):
            p.on_item(msg, payload)
            return
        del self._pending[rid]
        if p.future.done():
            return
        if isinstance(msg, protocol.ErrorReply):
            p.future.set_exception(errors.from_code(msg.code, msg.message, dict(msg.details)))
        else:
            p.future.set_result((msg, payload))
