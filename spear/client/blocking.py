"""The blocking client: :class:`Client`, safe to share between threads.

zmq sockets must never be used by two threads at once, so a call borrows a
DEALER socket from the client's idle pool (opening one when none is idle),
does its whole exchange on it, and gives it back. One thread reuses one
socket, so a lone caller pays no more than a plain socket would; ``n``
threads calling at once get ``n`` sockets and ``n`` calls in flight. A
socket whose exchange did not finish (a timeout, an abandoned stream) is
closed, not given back, so a late reply never answers the next call.
Waiting callers look at the client every :data:`WAKE` seconds, so ``close()``
from any thread ends their calls with ``Unavailable`` within that time.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Iterator

import msgspec
import zmq

from .. import errors, protocol as P
from ..config import default_sms_address
from ..mesh import context
from ..mesh.endpoint import ZERO_COPY_MIN, random_routing_id
from .api import RETRYABLE, Api, accepted, function_info, key_of, not_stored, result_of, security_of

#: how often (seconds) a waiting call checks whether the client was closed
WAKE = 0.1


def _send(sock: zmq.Socket, frames: list) -> None:
    """Send a request; a big ``bytes`` payload goes without a copy (libzmq keeps a
    reference until it is on the wire; a mutable buffer might change before)."""
    last = frames[-1]
    sock.send_multipart(frames, copy=type(last) is not bytes or len(last) < ZERO_COPY_MIN)


def _closed() -> errors.Unavailable:
    return errors.Unavailable("the client is closed")


class Client(Api):
    """Blocking client over plain zmq sockets (no event loop needed).

    One instance may be shared by any number of threads: each call in flight
    holds a socket of its own (see the module docstring for what that costs).
    ``close()`` from any thread ends the calls in flight with ``Unavailable``;
    a closed client refuses further calls with ``Unavailable`` too.
    """

    def __init__(self, sms: str | None = None, *, timeout: float = 10.0, security=None) -> None:
        self.sms = sms or default_sms_address()
        self.timeout = timeout
        self.security = security_of(security)
        self._idle: dict[str | None, list[zmq.Socket]] = {}
        self._keys: dict[str, bytes] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False

    def _next_id(self) -> int:
        return next(self._ids)

    # ------------------------------------------------------------ the socket pool

    def _borrow(self, target: str | None) -> zmq.Socket:
        """An idle socket to ``target``, or a new one; this call's alone until given back."""
        with self._lock:
            if self._closed:
                raise _closed()
            idle = self._idle.get(target)
            if idle:
                return idle.pop()
        return self._open(target)

    def _open(self, target: str | None) -> zmq.Socket:
        key = None
        if target and self.security is not None:
            key = self._keys.get(target) or key_of(self.nodes(), target)
            if key is None:
                raise errors.NotFound(f"no node at {target} is known to the SMS (needed for its key)")
            self._keys[target] = key
        s = context().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTING_ID, random_routing_id())  # replies only ever reach us
        if self.security is not None:
            self.security.connect_to(s, key)
        s.connect(target or self.sms)
        return s

    def _give_back(self, target: str | None, sock: zmq.Socket, finished: bool) -> None:
        """Return a socket whose exchange ``finished`` to the pool; close any other."""
        if finished:
            with self._lock:
                if not self._closed:
                    self._idle.setdefault(target, []).append(sock)
                    return
        sock.close(linger=0)

    def _recv(self, sock: zmq.Socket, deadline: float) -> list | None:
        """The next frames on ``sock`` before ``deadline`` (None: none came)."""
        while True:
            if self._closed:
                raise _closed()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            # a blocking receive with a timeout: one wait, no separate poll
            sock.setsockopt(zmq.RCVTIMEO, int(min(left, WAKE) * 1000) + 1)
            try:
                return sock.recv_multipart()
            except zmq.Again:
                continue

    def _replies(self, sock: zmq.Socket, msg, timeout: float, what: str) -> Iterator[tuple]:
        """Every message answering ``msg`` on ``sock`` until ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            frames = self._recv(sock, deadline)
            if frames is None:
                raise errors.DeadlineExceeded(what)
            try:
                reply, rpayload = P.decode(frames)
            except errors.ProtocolError:
                continue
            if getattr(reply, "id", None) == msg.id:
                yield reply, rpayload

    # ------------------------------------------------------------ the transport

    def _call(self, target, msg, payload, extract, timeout):
        timeout = timeout or self.timeout
        sock = self._borrow(target)
        finished = False
        try:
            _send(sock, P.encode(msg, payload))
            what = f"no reply from {target or self.sms} within {timeout:g}s"
            for reply, rpayload in self._replies(sock, msg, timeout, what):
                finished = True  # an error reply ends the exchange too
                P.raise_for(reply)
                return extract(reply, rpayload)
        finally:
            self._give_back(target, sock, finished)

    def _deploy(self, target, msg, artifact, by_ref, timeout):
        if by_ref:
            try:
                return self._call(target, msg, None, function_info, timeout)
            except errors.NotFound as exc:
                if not not_stored(exc):
                    raise
            msg = msgspec.structs.replace(msg, id=self._next_id())
        return self._call(target, msg, artifact, function_info, timeout)

    def _submit(self, target, msg, payload, retries):
        for attempt in range(retries + 1):
            try:
                return self._call(target, msg, payload, accepted, None)
            except RETRYABLE:
                if attempt == retries or self._closed:
                    raise
                time.sleep(min(0.1 * 2 ** attempt, 2.0))
                msg = msgspec.structs.replace(msg, id=self._next_id())

    def stream(self, function: str, data: bytes | str = b"", *, args=None,
               node: str | None = None, timeout: float | None = None,
               trace_id: str = "", traceparent: str = "",
               tracestate: str = "") -> Iterator[Any]:
        """Invoke in stream mode: yields log chunks (bytes) as they arrive, then the result
        (``traceparent``/``tracestate``: as for :meth:`invoke`)."""
        msg, data = self._invoke_msg(function, data, args, "stream", timeout, trace_id, "",
                                     traceparent, tracestate)
        return self._chunks_then_result(node, msg, data, (timeout or self.timeout) + 5.0)

    def follow(self, execution_id: str, *, wait: float = 600.0,
               node: str | None = None) -> Iterator[Any]:
        """Wait up to ``wait`` seconds for an execution to end: yields its log chunks
        (bytes) as the SMS relays them (an execution invoked in stream mode has
        them), then its record, terminal unless ``wait`` ran out first."""
        msg = P.GetExecution(id=self._next_id(), execution_id=execution_id, wait=wait, follow=True)
        return self._chunks_then_result(node, msg, None, wait + self.timeout)

    def _chunks_then_result(self, node: str | None, msg, data, timeout: float) -> Iterator[Any]:
        """Send ``msg``; yield the ``LogChunk`` data answering it, then its result."""
        sock = self._borrow(node)
        finished = False
        try:
            _send(sock, P.encode(msg, data))
            what = f"stream from {node or self.sms} timed out"
            for reply, rpayload in self._replies(sock, msg, timeout, what):
                if isinstance(reply, P.LogChunk):
                    yield reply.data
                    continue
                finished = True
                P.raise_for(reply)
                yield result_of(reply, rpayload)
                return
        finally:
            self._give_back(node, sock, finished)

    def events(self, since: int = 0, *, until: float | None = None) -> Iterator[P.Event]:
        """Subscribe to node and execution events after ``since`` (blocking iterator).

        ``until``: a ``time.monotonic()`` deadline. Resume after a reconnect by
        passing the last ``seq`` seen. A subscription has a socket of its own.
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
                if self._closed:
                    raise _closed()
                wait = WAKE if until is None else min(WAKE, until - time.monotonic())
                if until is not None and wait <= 0:
                    return
                if not sock.poll(int(wait * 1000) + 1):
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
        """Close every idle socket; calls in flight (in any thread) end with
        ``Unavailable`` within :data:`WAKE` seconds. Closing twice does nothing."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for socks in idle.values():
            for s in socks:
                s.close(linger=0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
