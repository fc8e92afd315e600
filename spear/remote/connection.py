"""One connection to a cluster: an AsyncClient driven by a background loop.

Every remote call is a coroutine on one private event loop in a daemon
thread, so a thousand calls in flight cost a thousand small tasks, not a
thousand threads, and callers on any thread (or in any event loop) get a
:class:`~.futures.RemoteFuture` at once. The connection also holds what its
functions ship: the code bundle (packed once, at connect) and the resolved
requirements (one resolution per distinct set).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import weakref

from .. import errors, protocol as P
from ..client import AsyncClient
from ..client.requirements import resolve, this_python
from .futures import RemoteFuture, read_reply
from .shipping import code_bundle, requirement_lines, runner_requirements

log = logging.getLogger(__name__)
#: how long the first calls of a deployment may wait, beyond their own
#: timeout, for the nodes to build its environment
BUILD_WAIT = 600.0


class Connection:
    """A background event loop and the :class:`AsyncClient` it drives.

    ``working_dir`` (a directory or None) is packed into the code bundle every
    function of this connection ships; ``requirements`` are added to every
    function's own. Each function is deployed once per connection, on its
    first call; calls made while the deploy is under way wait for it, and
    calls made before one came back wait for the nodes to build the
    function's environment too (:data:`BUILD_WAIT`).
    """

    def __init__(self, address: str | None = None, *, working_dir=None, requirements=(),
                 **client_kwargs) -> None:
        self.code = code_bundle(working_dir)  # a bad directory fails here, before any thread
        self.requirements = requirement_lines(requirements)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="spear-remote",
                                        daemon=True)
        self._thread.start()
        client_kwargs.setdefault("timeout", 60.0)
        self.client: AsyncClient = self._run(self._open(address, client_kwargs)).result()
        # the tasks below are touched only on the loop
        self._specs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # fn -> spec
        self._pins: dict[tuple, asyncio.Future] = {}  # (python, lines) -> resolved pins
        self._deploys: dict[str, asyncio.Future] = {}  # deployment name -> deploy
        self._answered: set[str] = set()  # deployments a call of which came back
        self._closed = False

    @staticmethod
    async def _open(address, client_kwargs) -> AsyncClient:
        return AsyncClient(address, **client_kwargs)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def submit(self, fn, args: tuple, kwargs: dict, trace: tuple[str, str] = ("", "")) -> RemoteFuture:
        """Start one call of the :class:`~.functions.RemoteFunction` ``fn``
        (``trace``: the W3C traceparent and tracestate it joins)."""
        if self._closed:
            raise errors.Unavailable("this spear connection is closed")
        future = RemoteFuture()
        data = fn.encode_call(args, kwargs, self.code.root)  # pickling on the caller's thread
        self._loop.call_soon_threadsafe(self._start, future, fn, data, trace)
        return future

    def spec_of(self, fn) -> P.FunctionSpec:
        """The spec ``fn`` deploys with on this connection (resolving its requirements)."""
        return self._run(self._spec(fn)).result()

    def _start(self, future: RemoteFuture, fn, data: bytes, trace: tuple[str, str]) -> None:
        if future.set_running_or_notify_cancel():
            self._loop.create_task(self._drive(future, fn, data, trace))

    async def _drive(self, future: RemoteFuture, fn, data: bytes, trace: tuple[str, str]) -> None:
        try:
            spec = await self._spec(fn)
            await _once(self._deploys, spec.name, lambda: self.client.deploy(spec))
            reply = await self._call(future, spec.name, fn.timeout, data, trace)
            future.execution_id = reply.execution_id
            reply.raise_for_status()
            future.set_result(read_reply(reply.output, fn.__wrapped__, self.code))
        except BaseException as exc:  # noqa: BLE001 - the caller gets whatever happened
            future.set_exception(exc)

    async def _call(self, future: RemoteFuture, name: str, timeout: float | None, data: bytes,
                    trace: tuple[str, str]):
        tp, ts = trace
        if name in self._answered:
            return await self.client.invoke(name, data, timeout=timeout, traceparent=tp,
                                            tracestate=ts)
        # Until a call of this deployment has come back, a call may find its
        # node building the function's environment first, which its timeout
        # does not cover: wait for the execution's end, not for one reply.
        eid = future.execution_id = await self.client.submit(name, data, timeout=timeout,
                                                             traceparent=tp, tracestate=ts)
        budget = (timeout or self.client.timeout) + BUILD_WAIT
        reply = await self.client.wait(eid, timeout=budget)
        if reply.status not in P.TERMINAL:
            raise errors.DeadlineExceeded(
                f"execution {eid} of {name} is still {reply.status} after {budget:g} s")
        self._answered.add(name)
        return reply

    async def _spec(self, fn) -> P.FunctionSpec:
        return await _once(self._specs, fn, lambda: self._make_spec(fn))

    async def _make_spec(self, fn) -> P.FunctionSpec:
        python = fn.python or this_python()
        lines = tuple(sorted({*runner_requirements(), *self.requirements, *fn.requirements}))
        pins = await _once(self._pins, (python, lines),
                           lambda: asyncio.to_thread(resolve, lines, python, log.info))
        return fn.spec(self.code, pins, python)

    async def _shutdown(self) -> None:
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.close()

    def close(self) -> None:
        """Close the client and stop the loop; calls still running fail (cancelled)."""
        global _default
        if self._closed:
            return
        self._closed = True
        with _lock:
            if _default is self:
                _default = None  # the next .remote connects again
        self._run(self._shutdown()).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


async def _once(cache, key, start):
    """Await the one task ``cache`` holds for ``key``, started by ``start()`` if
    none is; a failed task is dropped, so the next caller tries again."""
    task = cache.get(key)
    if task is None:
        task = cache[key] = asyncio.ensure_future(start())
    try:
        return await asyncio.shield(task)
    except BaseException:
        if cache.get(key) is task:
            del cache[key]
        raise


_lock = threading.Lock()
_default: Connection | None = None  # made by spear.connect() or the first .remote


def set_default(conn: Connection) -> Connection:
    """Make ``conn`` the process-wide default connection, closing the previous one."""
    global _default
    with _lock:
        old, _default = _default, conn
    if old is not None:
        old.close()
    return conn


def default_connection() -> Connection:
    """The default connection, made on first use (to the default SMS address)."""
    global _default
    with _lock:
        if _default is None:
            _default = Connection()
        return _default


@atexit.register
def _close_default() -> None:
    global _default
    with _lock:
        conn, _default = _default, None
    if conn is not None:
        conn.close()
