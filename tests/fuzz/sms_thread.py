"""An SMS on its own event loop in a thread of the test process, and raw fake nodes for it.

The fuzz findings' regression tests send hand-made frames to this SMS and then
look at its state directly (:meth:`ThreadSMS.call` runs code on its loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import zmq

from spear import protocol as P
from spear.config import load_config
from tests.helpers import dealer, request


class ThreadSMS:
    """An SMS on its own event loop in a thread, so tests can look at its state."""

    def __init__(self, **overrides) -> None:
        self.config = load_config(env={}, overrides={
            "sms.listen": "tcp://127.0.0.1:0", "storage.backend": "memory", **overrides})
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="sms", daemon=True)
        self.thread.start()
        if not self._ready.wait(10) or self.error is not None:
            raise RuntimeError(f"in-process SMS did not start: {self.error!r}")

    def _run(self) -> None:
        from spear.sms.daemon import SMS

        asyncio.set_event_loop(self.loop)
        try:
            self.sms = SMS(self.config)
            self.address = self.loop.run_until_complete(self.sms.start())
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def call(self, fn):
        """Run ``fn()`` on the SMS's loop and return its result."""
        async def run():
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.sms.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()



def register_node(addr: str, node_id: str, **info) -> zmq.Socket:
    """A raw DEALER registered at the SMS as node ``node_id`` (its routing id too).

    It answers nothing by itself: the test makes it say what it must. Close it
    with ``close(0)``.
    """
    s = dealer(addr, node_id.encode())
    welcome = request(s, P.Register(id=1, node=P.NodeInfo(node_id=node_id, **info)))
    assert isinstance(welcome, P.Welcome), welcome
    return s
