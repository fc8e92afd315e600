"""The blocking client: :class:`Client`, safe to share between threads.

zmq sockets must never be used by two threads, so no caller touches one: the
first call starts a background thread running an event loop that owns an
:class:`~spear.client.aio.AsyncClient` (and with it every socket), and each
blocking call hands its coroutine to that loop and waits for the answer.
Replies are matched to requests by id, so calls from many threads are in
flight on one socket at once; a call costs one hand-off to the loop thread
and back (tens of microseconds) on top of the round trip.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
import weakref
from typing import Any, AsyncIterator, Iterator

from .. import errors, protocol as P
from ..config import default_sms_address
from .aio import AsyncClient
from .api import Api, security_of

#: marks the end of a bridged stream in its queue
_END = object()


def _closed() -> errors.Unavailable:
    return errors.Unavailable("the client is closed")


def _shut(loop: asyncio.AbstractEventLoop, client: AsyncClient) -> None:
    """Inside the loop: close every socket (waiters get Unavailable), cancel
    what is still running, then stop."""

    async def down() -> None:
        await client.close()
        me = asyncio.current_task()
        for task in asyncio.all_tasks():
            if task is not me:
                task.cancel()
        loop.stop()

    loop.create_task(down())


def _stop(loop: asyncio.AbstractEventLoop, client: AsyncClient, thread: threading.Thread) -> None:
    """Stop the loop thread from any other thread (also the finalizer of a
    client dropped without ``close``)."""
    if loop.is_closed() or not thread.is_alive():
        return
    try:
        loop.call_soon_threadsafe(_shut, loop, client)
    except RuntimeError:  # the loop closed meanwhile
        return
    if thread is not threading.current_thread():
        thread.join(5.0)


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The loop thread's body."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


class Client(Api):
    """Blocking client; one instance may be shared by any number of threads.

    Every method of :class:`~spear.client.aio.AsyncClient` is here as a
    blocking call with the same arguments and results. ``close()`` (from any
    thread) ends every call in flight with ``Unavailable``; a closed client
    refuses further calls with ``Unavailable`` too.
    """

    def __init__(self, sms: str | None = None, *, timeout: float = 10.0, security=None) -> None:
        self.sms = sms or default_sms_address()
        self.timeout = timeout
        self.security = security_of(security)
        self._async = AsyncClient(self.sms, timeout=timeout, security=self.security)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._finalizer: weakref.finalize | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        """The loop thread, started by the first call."""
        with self._lock:
            if self._closed:
                raise _closed()
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=_serve, args=(loop,), daemon=True,
                                          name=f"spear-client {self.sms}")
                thread.start()
                self._loop, self._thread = loop, thread
                # the finalizer holds the loop and the AsyncClient, never self
                self._finalizer = weakref.finalize(self, _stop, loop, self._async, thread)
            return self._loop

    def _schedule(self, coro) -> concurrent.futures.Future:
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._start())
        except RuntimeError:  # the loop closed between the check and the hand-off
            coro.close()
            raise _closed() from None
        except BaseException:
            coro.close()  # never started: no "never awaited" warning
            raise

    def _run(self, coro) -> Any:
        fut = self._schedule(coro)
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            raise _closed() from None

    def _next_id(self) -> int:
        return self._async._next_id()

    def _call(self, target, msg, payload, extract, timeout):
        return self._run(self._async._call(target, msg, payload, extract, timeout))

    def _submit(self, target, msg, payload, retries):
        return self._run(self._async._submit(target, msg, payload, retries))

    def _bridge(self, agen: AsyncIterator[Any], until: float | None = None) -> Iterator[Any]:
        """Iterate an async generator of the loop thread from this thread.

        ``until``: a ``time.monotonic()`` deadline after which iteration ends.
        Leaving the loop early closes the async generator (its ``finally`` runs
        in the loop thread).
        """
        items: queue.Queue = queue.Queue()

        async def pump() -> None:
            try:
                async for item in agen:
                    items.put((item, None))
                items.put((_END, None))
            except asyncio.CancelledError:
                items.put((_END, _closed()))
                raise
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                items.put((_END, exc))
            finally:
                await agen.aclose()

        fut = self._schedule(pump())
        try:
            while True:
                try:
                    if until is None:
                        item, exc = items.get()
                    else:
                        item, exc = items.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    return
                if item is _END:
                    if exc is not None:
                        raise exc
                    return
                yield item
        finally:
            fut.cancel()

    def stream(self, function: str, data: bytes | str = b"", *, args=None,
               node: str | None = None, timeout: float | None = None,
               trace_id: str = "") -> Iterator[Any]:
        """Invoke in stream mode: yields log chunks (bytes) as they arrive, then the result."""
        # checked here so that a bad argument raises before the first step
        self._invoke_msg(function, data, args, "stream", timeout, trace_id)
        return self._bridge(self._async.stream(function, data, args=args, node=node,
                                               timeout=timeout, trace_id=trace_id))

    def events(self, since: int = 0, *, until: float | None = None) -> Iterator[P.Event]:
        """Subscribe to node and execution events after ``since`` (blocking iterator).

        ``until``: a ``time.monotonic()`` deadline. Resume after a reconnect by
        passing the last ``seq`` seen; see :meth:`AsyncClient.events`.
        """
        return self._bridge(self._async.events(since), until)

    def close(self) -> None:
        """Close every socket and stop the loop thread; calls in flight (from
        any thread) end with ``Unavailable``. Closing twice does nothing."""
        with self._lock:
            self._closed = True
            finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer()  # runs _stop once, and never again at garbage collection

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
