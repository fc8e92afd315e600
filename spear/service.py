"""What every Spear daemon shares: run until SIGTERM/SIGINT, then close.

A daemon subclasses :class:`Service`, implements ``start()`` (which must set
``self._stopping = asyncio.Event()`` once running) and ``close()``.
"""

from __future__ import annotations

import asyncio
import signal


class Service:
    _stopping: asyncio.Event | None = None

    async def start(self):  # pragma: no cover - every daemon overrides it
        raise NotImplementedError

    async def close(self) -> None:  # pragma: no cover - every daemon overrides it
        raise NotImplementedError

    def stop(self) -> None:
        """Ask ``serve_forever`` to close the daemon (safe before ``start``)."""
        if self._stopping is not None:
            self._stopping.set()

    async def serve_forever(self) -> None:
        """Start, run until SIGTERM/SIGINT or :meth:`stop`, then close."""
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):  # not the main thread / platform
                pass
        await self._stopping.wait()
        await self.close()
