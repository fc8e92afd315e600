"""The asyncio client: :class:`AsyncClient`, one DEALER per daemon it talks to.

Replies are matched to requests by id inside :class:`~spear.mesh.DealerPeer`,
so any number of calls may be in flight on one socket at once. Event
subscriptions share a DEALER of their own (:class:`_EventFeed`).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, AsyncIterator

import msgspec

from .. import errors, protocol as P
from ..config import default_sms_address
from ..mesh import DealerPeer
from .api import RETRYABLE, Api, accepted, function_info, key_of, not_stored, result_of, security_of


#: what an event queue holds after its subscriber fell too far behind
_BEHIND = object()


def _offer(q: asyncio.Queue, item) -> None:
    """Put ``item`` last, dropping the oldest entry if the queue is full."""
    try:
        q.put_nowait(item)
    except asyncio.QueueFull:
        q.get_nowait()
        q.put_nowait(item)


class _EventFeed:
    """Every event subscription of one :class:`AsyncClient`, on one DEALER of its own.

    A connection apart from the calls' keeps a flood of events from ever
    delaying (or, at the SMS's send limit, dropping) a reply. Each
    subscription has its own request id and queue; ``Event`` messages are
    routed to the queue by that id.
    """

    def __init__(self, sms: str, security, ids) -> None:
        self.sms = sms
        self._peer = DealerPeer("client-events", on_message=self._on_message, security=security)
        self._peer._ids = ids
        self._queues: dict[int, asyncio.Queue] = {}
        self._started = False

    def _start(self) -> None:
        """Connect on the first subscription's first step (inside the running loop)."""
        if not self._started:
            self._peer.connect(self.sms)
            self._peer.start()
            self._started = True

    def _on_message(self, msg, payload) -> None:
        q = self._queues.get(getattr(msg, "id", 0))
        if q is None:
            return
        if isinstance(msg, P.Event):
            if q.full():  # stop routing to it; it learns so after what it already has
                self._queues.pop(msg.id, None)
                _offer(q, _BEHIND)
            else:
                q.put_nowait(msg)
        elif isinstance(msg, P.ErrorReply):
            _offer(q, errors.from_code(msg.code, msg.message))

    async def follow(self, since: int, queue_size: int, resubscribe: float) -> AsyncIterator[P.Event]:
        """The body of :meth:`AsyncClient.events`."""
        self._start()
        rid = self._peer.next_id()
        q: asyncio.Queue = asyncio.Queue(queue_size + 1)
        self._queues[rid] = q
        last = since
        self._peer.send(P.Subscribe(id=rid, since=since))
        try:
            while True:
                try:
                    item = await asyncio.wait_for(q.get(), resubscribe)
                except asyncio.TimeoutError:
                    self._peer.send(P.Subscribe(id=rid, since=last))
                    continue
                if item is _BEHIND:
                    raise errors.ResourceExhausted(
                        f"event subscriber fell more than {queue_size} events behind; "
                        f"subscribe again from seq {last} to resume")
                if isinstance(item, BaseException):
                    raise item
                if item.seq <= last and last:
                    continue  # a replay after re-subscribing
                last = item.seq
                yield item
        finally:
            self._queues.pop(rid, None)
            self._peer.send(P.Unsubscribe(id=rid))

    def close(self) -> None:
        for q in self._queues.values():
            _offer(q, errors.Unavailable("the client is closing"))
        self._peer.close()


class AsyncClient(Api):
    """asyncio client. Use ``async with AsyncClient(sms) as c:``.

    ``security``: a :class:`spear.mesh.security.Security` or the config's
    ``[security]`` section; with keys, every socket uses CURVE and direct
    Spearlet connections learn the node's public key from the SMS.
    """

    def __init__(self, sms: str | None = None, *, timeout: float = 10.0, security=None) -> None:
        self.sms = sms or default_sms_address()
        self.timeout = timeout
        self.security = security_of(security)
        self._peers: dict[str | None, DealerPeer] = {}
        self._keys: dict[str, bytes] = {}
        self._ids = itertools.count(1)
        self._feed: _EventFeed | None = None

    def _peer(self, target: str | None) -> DealerPeer:
        peer = self._peers.get(target)
        if peer is None:
            peer = DealerPeer(f"client->{target or 'sms'}", security=self.security,
                              server_key=self._keys.get(target) if target else None)
            peer._ids = self._ids  # one id space for all sockets of this client
            peer.connect(target or self.sms)
            peer.start()
            self._peers[target] = peer
        return peer

    def _next_id(self) -> int:
        return next(self._ids)

    async def _submit(self, target, msg, payload, retries):
        for attempt in range(retries + 1):
            try:
                return await self._call(target, msg, payload, accepted, None)
            except RETRYABLE:
                if attempt == retries:
                    raise
                await asyncio.sleep(min(0.1 * 2 ** attempt, 2.0))
                msg = msgspec.structs.replace(msg, id=self._next_id())

    async def _deploy(self, target, msg, artifact, by_ref, timeout):
        if by_ref:
            try:
                return await self._call(target, msg, None, function_info, timeout)
            except errors.NotFound as exc:
                if not not_stored(exc):
                    raise
            msg = msgspec.structs.replace(msg, id=self._next_id())
        return await self._call(target, msg, artifact, function_info, timeout)

    async def _call(self, target, msg, payload, extract, timeout):
        if target and self.security is not None and target not in self._peers \
                and target not in self._keys:
            key = key_of(await self.nodes(), target)
            if key is None:
                raise errors.NotFound(f"no node at {target} is known to the SMS (needed for its key)")
            self._keys[target] = key
        peer = self._peer(target)
        reply, rpayload = await peer.request(msg, payload, timeout=timeout or self.timeout)
        return extract(reply, rpayload)

    def stream(self, function: str, data: bytes | str = b"", *, args=None,
               node: str | None = None, timeout: float | None = None,
               trace_id: str = "", traceparent: str = "",
               tracestate: str = "") -> AsyncIterator[Any]:
        """Invoke in stream mode: yields ``LogChunk`` data (bytes), then the result
        (``traceparent``/``tracestate``: as for :meth:`invoke`)."""
        msg, data = self._invoke_msg(function, data, args, "stream", timeout, trace_id, "",
                                     traceparent, tracestate)
        return self._chunks_then_result(node, msg, data, (timeout or self.timeout) + 5.0)

    def follow(self, execution_id: str, *, wait: float = 600.0,
               node: str | None = None) -> AsyncIterator[Any]:
        """Wait up to ``wait`` seconds for an execution to end: yields its log chunks
        (bytes) as the SMS relays them (an execution invoked in stream mode has
        them), then its record, terminal unless ``wait`` ran out first."""
        msg = P.GetExecution(id=self._next_id(), execution_id=execution_id, wait=wait, follow=True)
        return self._chunks_then_result(node, msg, None, wait + self.timeout)

    async def _chunks_then_result(self, node: str | None, msg, data, timeout: float):
        """Send ``msg``; yield the ``LogChunk`` data answering it, then its result."""
        peer = self._peer(node)
        queue: asyncio.Queue = asyncio.Queue()
        fut = peer.request(msg, data, timeout=timeout,
                           on_item=lambda m, p: queue.put_nowait(m.data))
        fut.add_done_callback(lambda f: queue.put_nowait(None))
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                yield item
        finally:
            if not fut.done():  # abandoned: later chunks and the result go nowhere
                peer.forget(msg.id)
        reply, rpayload = fut.result()
        yield result_of(reply, rpayload)

    def events(self, since: int = 0, *, queue_size: int = 10_000,
               resubscribe: float = 10.0) -> AsyncIterator[P.Event]:
        """Every node and execution event with ``seq > since``, for ever (async iterator).

        The SMS first replays what it still holds after ``since``. Every
        ``resubscribe`` seconds without an event the subscription is renewed
        from the last seq delivered, so a silent SMS restart (the socket
        reconnects, the new SMS knows no subscribers) costs at most that long
        a gap; events seen twice because of it are skipped by seq. A
        subscriber more than ``queue_size`` events behind gets
        ``ResourceExhausted`` after the events it has: resume by calling
        again with the last seq it saw. Closing the client ends every
        subscription with ``Unavailable``; closing the iterator (``aclose``,
        or leaving an ``async for``) unsubscribes.
        """
        if self._feed is None:
            self._feed = _EventFeed(self.sms, self.security, self._ids)
        return self._feed.follow(since, queue_size, resubscribe)

    async def close(self) -> None:
        """Close every socket; open event subscriptions end with ``Unavailable``."""
        if self._feed is not None:
            self._feed.close()
            self._feed = None
        for peer in self._peers.values():
            peer.close()
        self._peers.clear()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
