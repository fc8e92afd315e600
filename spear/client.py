"""Client library: :class:`AsyncClient` (asyncio) and :class:`Client` (blocking).

Both speak the same protocol through DEALER sockets and share every public
method through :class:`_Api`; only the transport differs. Every call has a
timeout and raises a typed :mod:`spear.errors` exception. Streams (``stream``:
an invocation's log chunks, then its result; ``events``: the SMS's node and
execution events) are iterators on both.

``node=ADDR`` on a call talks to that Spearlet directly (its Runner)
instead of going through the SMS.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid
from typing import Any, AsyncIterator, Callable, Iterator

import msgspec
import zmq

from . import errors, protocol as P
from .config import default_sms_address
from .mesh import DealerPeer, context
from .mesh.endpoint import random_routing_id


def _field(name: str, *, as_list: bool = False) -> Callable[[Any, Any], Any]:
    """A reply extractor: the reply's ``name`` field (copied to a list for ``as_list``)."""
    if as_list:
        return lambda reply, payload: list(getattr(reply, name))
    return lambda reply, payload: getattr(reply, name)


_nodes = _field("nodes", as_list=True)
_node = _field("node")
_function = _field("function")
_functions = _field("functions", as_list=True)
_spec = _field("spec")
_accepted = _field("execution_id")


def _whole(reply, payload):
    return reply


def _none(reply, payload):
    return None


def _exec_page(reply, payload):
    return list(reply.executions), reply.total


class ExecutionResult:
    """The outcome of an execution: its record plus the output bytes."""

    __slots__ = ("info", "output")

    def __init__(self, info: P.ExecutionInfo, output: bytes) -> None:
        self.info = info
        self.output = output

    @property
    def ok(self) -> bool:
        return self.info.status == "succeeded"

    @property
    def status(self) -> str:
        return self.info.status

    @property
    def execution_id(self) -> str:
        return self.info.execution_id

    def raise_for_status(self) -> "ExecutionResult":
        """Raise the typed error of a failed execution; return self otherwise."""
        if self.info.error is not None and not self.ok:
            raise errors.from_code(self.info.error.code, self.info.error.message)
        return self

    def __repr__(self) -> str:
        return f"ExecutionResult({self.info.status}, {self.output[:60]!r})"


def _result(reply, payload):
    return ExecutionResult(reply.execution, bytes(payload) if payload is not None else b"")


#: what ``protocol.TraceId`` accepts (its constraint, read from the type itself)
_TRACE_ID = re.compile(P.TraceId.__metadata__[0].pattern)
_IDEM = re.compile(r"^[\x21-\x7e]{1,128}\Z")
#: what a submit retries on: the SMS may or may not have the execution
_RETRYABLE = (errors.DeadlineExceeded, errors.Unavailable)


class _Api:
    """The public operations, written once for both transports.

    ``_call(target, msg, payload, extract, timeout)`` is provided by the
    transport: it returns the extracted value (blocking) or an awaitable.
    """

    timeout: float

    def _next_id(self) -> int:
        raise NotImplementedError

    def _call(self, target, msg, payload, extract, timeout):
        raise NotImplementedError

    def _invoke_msg(self, function, data, args, mode, timeout, trace_id, idempotency_key=""):
        """The Invoke message and its payload frame (None when the input is empty)."""
        if isinstance(data, str):
            data = data.encode()
        if trace_id and not _TRACE_ID.match(trace_id):
            # a Struct built in Python is not validated: refuse here, not after a round trip
            raise errors.InvalidArgument(
                f"trace_id {trace_id[:60]!r} is not valid: up to 128 of A-Z a-z 0-9 . _ : / + = -")
        if idempotency_key and not _IDEM.match(idempotency_key):
            raise errors.InvalidArgument(
                f"idempotency_key {idempotency_key[:60]!r} is not valid: 1-128 printable ASCII, no spaces")
        msg = P.Invoke(id=self._next_id(), function=function, args=list(args or ()),
                       mode=mode, timeout=timeout, trace_id=trace_id,
                       idempotency_key=idempotency_key)
        return msg, data or None

    # ------------------------------------------------------------ any daemon

    def ping(self, *, node: str | None = None, timeout: float | None = None):
        """Liveness probe of the SMS (or of the Spearlet at ``node``)."""
        return self._call(node, P.Ping(id=self._next_id()), None, _whole, timeout)

    # ------------------------------------------------------------ NodeService

    def nodes(self, state: str | None = None, *, timeout: float | None = None):
        """All registered nodes (optionally only those in ``state``)."""
        return self._call(None, P.ListNodes(id=self._next_id(), state=state), None, _nodes, timeout)

    def node(self, node_id: str, *, timeout: float | None = None):
        """One node by id or name; raises NotFound."""
        return self._call(None, P.GetNode(id=self._next_id(), node_id=node_id), None, _node, timeout)

    # ------------------------------------------------------------ functions

    def deploy(self, spec: P.FunctionSpec, *, node: str | None = None, timeout: float | None = None):
        """Deploy a function (directly on ``node``); returns its FunctionInfo.

        The artifact travels as a raw payload frame, not inside the message.
        """
        artifact = spec.artifact
        if artifact is not None:
            import msgspec

            spec = msgspec.structs.replace(spec, artifact=None)
        return self._call(node, P.DeployFunction(id=self._next_id(), spec=spec), artifact,
                          _function, timeout or max(self.timeout, 60.0))

    def remove(self, name: str, *, node: str | None = None, timeout: float | None = None):
        """Remove a deployed function."""
        return self._call(node, P.RemoveFunction(id=self._next_id(), name=name), None, _none, timeout)

    def functions(self, *, node: str | None = None, timeout: float | None = None):
        """The functions deployed (on ``node``)."""
        return self._call(node, P.ListFunctions(id=self._next_id()), None, _functions, timeout)

    # ------------------------------------------------------------ executions

    def invoke(
        self,
        function: str,
        data: bytes | str = b"",
        *,
        args: list | None = None,
        node: str | None = None,
        timeout: float | None = None,
        trace_id: str = "",
        idempotency_key: str = "",
    ):
        """Run ``function`` and return its :class:`ExecutionResult` (sync mode).

        ``idempotency_key``: calling again with the same key (after a timeout,
        say) waits for the first execution's result instead of starting another.

        A failed execution is a result with ``status != "succeeded"``, not an
        exception; call ``raise_for_status()`` to turn it into one.
        """
        msg, data = self._invoke_msg(function, data, args, "sync", timeout, trace_id,
                                     idempotency_key)
        wait = (timeout or self.timeout) + 5.0
        return self._call(node, msg, data, _result, wait)

    def submit(
        self,
        function: str,
        data: bytes | str = b"",
        *,
        args: list | None = None,
        node: str | None = None,
        timeout: float | None = None,
        trace_id: str = "",
        idempotency_key: str = "",
        retries: int = 2,
    ):
        """Start ``function`` asynchronously; returns the execution id.

        Safe to retry: the submission carries an idempotency key (yours, or a
        random one), and when no answer comes (DEADLINE_EXCEEDED) or the SMS
        is unavailable it is sent again with the same key up to ``retries``
        times, so the work runs once however many answers were lost. Reusing
        your own key later (even after an SMS restart) returns the same
        execution id.
        """
        key = idempotency_key or (uuid.uuid4().hex if retries and node is None else "")
        msg, data = self._invoke_msg(function, data, args, "async", timeout, trace_id, key)
        return self._submit(node, msg, data, retries if key else 0)

    def execution(self, execution_id: str, *, wait: float = 0.0, node: str | None = None,
                  timeout: float | None = None):
        """An execution's current record; ``wait`` seconds for it to finish.
        ``execution_id`` (here, in :meth:`wait` and :meth:`cancel`) may be any
        unique prefix of 8+ hex digits; the record names the whole id."""
        msg = P.GetExecution(id=self._next_id(), execution_id=execution_id, wait=wait)
        return self._call(node, msg, None, _result, (timeout or self.timeout) + wait)

    def wait(self, execution_id: str, *, timeout: float = 60.0, node: str | None = None):
        """Wait until the execution reaches a terminal state."""
        return self.execution(execution_id, wait=timeout, node=node)

    def executions(self, *, function: str = "", status: str | None = None, node_id: str = "",
                   limit: int = 100, offset: int = 0, timeout: float | None = None):
        """A page of execution records from the SMS, newest first: ``(items, total)``."""
        msg = P.ListExecutions(id=self._next_id(), function=function, status=status,
                               node_id=node_id, limit=limit, offset=offset)
        return self._call(None, msg, None, _exec_page, timeout)

    def function(self, name: str, *, timeout: float | None = None):
        """A registered function's spec (without artifact bytes) from the SMS."""
        return self._call(None, P.GetFunction(id=self._next_id(), name=name), None, _spec, timeout)

    def stats(self, *, timeout: float | None = None):
        """Cluster totals, reservations and execution counts (ResourceService)."""
        return self._call(None, P.Stats(id=self._next_id()), None, _whole, timeout)

    def cancel(self, execution_id: str, *, node: str | None = None, timeout: float | None = None):
        """Cancel an execution that has not finished."""
        msg = P.CancelExecution(id=self._next_id(), execution_id=execution_id)
        return self._call(node, msg, None, _none, timeout)


def _security(security):
    """Accept a Security, a SecurityConfig, or None (open)."""
    if security is None:
        return None
    from .mesh.security import Security

    if not isinstance(security, Security):
        security = Security.from_config(security)
    return security if security.enabled else None


def _key_of(nodes, address: str) -> bytes | None:
    for n in nodes:
        if n.address == address and n.public_key:
            return n.public_key.encode()
    return None


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


class AsyncClient(_Api):
    """asyncio client. Use ``async with AsyncClient(sms) as c:``.

    ``security``: a :class:`spear.mesh.security.Security` or the config's
    ``[security]`` section; with keys, every socket uses CURVE and direct
    Spearlet connections learn the node's public key from the SMS.
    """

    def __init__(self, sms: str | None = None, *, timeout: float = 10.0, security=None) -> None:
        self.sms = sms or default_sms_address()
        self.timeout = timeout
        self.security = _security(security)
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
                return await self._call(target, msg, payload, _accepted, None)
            except _RETRYABLE:
                if attempt == retries:
                    raise
                await asyncio.sleep(min(0.1 * 2 ** attempt, 2.0))
                msg = msgspec.structs.replace(msg, id=self._next_id())

    async def _call(self, target, msg, payload, extract, timeout):
        if target and self.security is not None and target not in self._peers \
                and target not in self._keys:
            key = _key_of(await self.nodes(), target)
            if key is None:
                raise errors.NotFound(f"no node at {target} is known to the SMS (needed for its key)")
            self._keys[target] = key
        peer = self._peer(target)
        reply, rpayload = await peer.request(msg, payload, timeout=timeout or self.timeout)
        return extract(reply, rpayload)

    async def stream(self, function: str, data: bytes | str = b"", *, args=None,
                     node: str | None = None, timeout: float | None = None, trace_id: str = ""):
        """Invoke in stream mode: yields ``LogChunk`` data (bytes), then the result."""
        peer = self._peer(node)
        queue: asyncio.Queue = asyncio.Queue()
        msg, data = self._invoke_msg(function, data, args, "stream", timeout, trace_id)
        fut = peer.request(msg, data, timeout=(timeout or self.timeout) + 5.0,
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
        yield _result(reply, rpayload)

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


class Client(_Api):
    """Blocking client over plain zmq sockets (no event loop needed)."""

    def __init__(self, sms: str | None = None, *, timeout: float = 10.0, security=None) -> None:
        self.sms = sms or default_sms_address()
        self.timeout = timeout
        self.security = _security(security)
        self._socks: dict[str | None, zmq.Socket] = {}
        self._keys: dict[str, bytes] = {}
        self._ids = itertools.count(1)

    def _sock(self, target: str | None) -> zmq.Socket:
        s = self._socks.get(target)
        if s is None:
            key = None
            if target and self.security is not None:
                key = self._keys.get(target) or _key_of(self.nodes(), target)
                if key is None:
                    raise errors.NotFound(f"no node at {target} is known to the SMS (needed for its key)")
                self._keys[target] = key
            s = context().socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.ROUTING_ID, random_routing_id())  # replies only ever reach us
            if self.security is not None:
                self.security.connect_to(s, key)
            s.connect(target or self.sms)
            self._socks[target] = s
        return s

    def _next_id(self) -> int:
        return next(self._ids)

    def _exchange(self, target, msg, payload, timeout, on_item: Callable | None = None):
        sock = self._sock(target)
        timeout = timeout or self.timeout
        sock.send_multipart(P.encode(msg, payload))
        deadline = time.monotonic() + timeout
        addr = target or self.sms
        while True:
            left = deadline - time.monotonic()
            frames = None
            if left > 0:
                # a blocking receive with a timeout: one wait, no separate poll
                sock.setsockopt(zmq.RCVTIMEO, int(left * 1000) + 1)
                try:
                    frames = sock.recv_multipart()
                except zmq.Again:
                    pass
            if frames is None:
                if time.monotonic() >= deadline:
                    # a late reply must not be read as the answer to the next call
                    sock.close(linger=0)
                    self._socks.pop(target, None)
                    raise errors.DeadlineExceeded(f"no reply from {addr} within {timeout:g}s")
                continue
            try:
                reply, rpayload = P.decode(frames)
            except errors.ProtocolError:
                continue
            if getattr(reply, "id", None) != msg.id:
                continue  # stale reply of an earlier, abandoned call
            if isinstance(reply, P.LogChunk) and on_item is not None:
                on_item(reply, rpayload)
                continue
            P.raise_for(reply)
            return reply, rpayload

    def _submit(self, target, msg, payload, retries):
        for attempt in range(retries + 1):
            try:
                return self._call(target, msg, payload, _accepted, None)
            except _RETRYABLE:
                if attempt == retries:
                    raise
                time.sleep(min(0.1 * 2 ** attempt, 2.0))
                msg = msgspec.structs.replace(msg, id=self._next_id())

    def _call(self, target, msg, payload, extract, timeout):
        return extract(*self._exchange(target, msg, payload, timeout))

    def stream(self, function: str, data: bytes | str = b"", *, args=None,
               node: str | None = None, timeout: float | None = None,
               trace_id: str = "") -> Iterator[Any]:
        """Invoke in stream mode: yields log chunks (bytes) as they arrive, then the result."""
        msg, data = self._invoke_msg(function, data, args, "stream", timeout, trace_id)
        sock = self._sock(node)
        sock.send_multipart(P.encode(msg, data))
        deadline = time.monotonic() + (timeout or self.timeout) + 5.0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                sock.close(linger=0)
                self._socks.pop(node, None)
                raise errors.DeadlineExceeded(f"stream from {node or self.sms} timed out")
            if not sock.poll(int(left * 1000) + 1):
                continue
            try:
                reply, rpayload = P.decode(sock.recv_multipart())
            except errors.ProtocolError:
                continue
            if getattr(reply, "id", None) != msg.id:
                continue
            if isinstance(reply, P.LogChunk):
                yield reply.data
                continue
            P.raise_for(reply)
            yield _result(reply, rpayload)
            return

    def events(self, since: int = 0, *, until: float | None = None) -> Iterator[P.Event]:
        """Subscribe to node and execution events after ``since`` (blocking iterator).

        ``until``: a ``time.monotonic()`` deadline. Resume after a reconnect by
        passing the last ``seq`` seen.
        """
        sock = context().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, random_routing_id())
        if self.security is not None:
            self.security.connect_to(sock)
        sock.connect(self.sms)
        rid = self._next_id()
        try:
            sock.send_multipart(P.encode(P.Subscribe(id=rid, since=since)))
            while True:
                wait = 1000 if until is None else int(max(0.0, until - time.monotonic()) * 1000)
                if until is not None and wait <= 0:
                    return
                if not sock.poll(wait):
                    continue
                try:
                    msg, _ = P.decode(sock.recv_multipart())
                except errors.ProtocolError:
                    continue
                P.raise_for(msg)
                if isinstance(msg, P.Event) and msg.id == rid:
                    yield msg
        finally:
            try:
                sock.send_multipart(P.encode(P.Unsubscribe(id=rid)), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            sock.close(linger=100)

    def close(self) -> None:
        for s in self._socks.values():
            s.close(linger=0)
        self._socks.clear()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
