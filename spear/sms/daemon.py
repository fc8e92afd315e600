"""The SMS daemon: a thin asyncio driver around :class:`spear.sms.core.SMSCore`.

It owns the ROUTER socket, the store, the timers and the metrics server. It
turns what happens into events - each decoded message with the caller's
authenticated identity, ticks, the outcome of every store call - feeds them
to the core with the time, and carries out the instructions it answers, in
order. A ``Persist`` or ``Load`` is performed at once and its outcome fed
back before anything else, so the core's view of the store stays current.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from ..service import Service
from .. import errors, memory, protocol as P
from ..config import Config
from ..metrics import SMSMetrics
from ..mesh import RouterServer, context
from ..mesh.endpoint import CLOSE_LINGER_MS
from ..mesh.security import Security, read_keys_dir, start_authenticator, warn_open
from ..store import open_store
from ..store.guarded import GuardedStore
from ..tracing import Tracer
from . import recovery
from .core import STALL, SMSCore
from .events import (Commit, CommitSoon, Dropped, Load, Loaded, Persist, Persisted, Received,
                     Send, Stopping, Tick, Undelivered, Upkeep)

log = logging.getLogger("spear.sms")


class SMS(Service):
    """Spear Management Service: nodes, functions, executions, scheduling."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = SMSMetrics()
        # every write goes through the guard: a failed one turns the SMS read-only
        # (new work refused with UNAVAILABLE) until a probe write succeeds again
        self.store = GuardedStore(open_store(config.storage.backend, config.storage.path))
        self.security = Security.from_config(config.security)
        self.server = RouterServer("sms", {}, security=self.security)
        self.server.endpoint.keep_payloads = True  # big payloads pass through uncopied
        self.core = SMSCore(config.sms, recovery.read(self.store), now=time.time(),
                            keyed=self.server.security is not None,
                            node_keys=self.security.node_keys if self.security.enabled else {},
                            metrics=self.metrics)
        self.core.tasks.tracer = Tracer.from_config(config.tracing, "spear-sms")
        self.server.handlers.update(dict.fromkeys(self.core.accepts, self._on_message))
        self.metrics.watch(self.core.tasks, self.core.registry, self.core.table, store=self.store)
        self.metrics.watch_mesh({"router": self.server})
        self.address = ""
        self._stopping: asyncio.Event | None = None
        self._tickers: list[asyncio.Task] = []
        #: monotonic time the loop last ran our code, and when a stall was last reported
        self._awake = self._stall_reported = time.monotonic()

    @property
    def registry(self):
        """The core's node registry (for inspection: tests, fuzzers)."""
        return self.core.registry

    @property
    def tasks(self):
        """The core's executions (for inspection)."""
        return self.core.tasks

    @property
    def table(self):
        """The core's node table (for inspection)."""
        return self.core.table

    @property
    def events(self):
        """The core's event subscriptions (for inspection)."""
        return self.core.events

    # ---------------------------------------------------------------- driving the core

    def _awake_now(self) -> None:
        """Called before each message and each upkeep: if the loop ran none of our
        code for over :data:`STALL` seconds (SIGSTOP, a long GC, swap), say so to the
        core first (a Tick with that lag), so what the stall may have broken (the
        nodes' links) is known before the first message after it is handled. After
        a stall, libuv may run the socket's callback before any timer's task."""
        mono = time.monotonic()
        gap, self._awake = mono - self._awake, mono
        if gap > STALL:
            self._stall_reported = mono
            self.feed(Tick(gap, self.store.error))

    def _on_message(self, ident: bytes, msg, payload) -> None:
        self._awake_now()
        server = self.server
        if server.security is not None:
            event = Received(ident, server.caller_key, server.caller_role, msg, payload)
        else:
            event = Received(ident, "", "", msg, payload)
        self._carry_out(self.core.handle(event, time.time()))

    def feed(self, event, now: float | None = None) -> None:
        """Hand ``event`` to the core (at ``now``, by default the time) and carry
        out what it answers."""
        self._carry_out(self.core.handle(event, time.time() if now is None else now))

    def _carry_out(self, instructions: list) -> None:
        for ins in instructions:
            if type(ins) is Send:  # the hot path: one per message in, about
                self._send(ins.ident, ins.msg, ins.payload)
                continue
            match ins:
                case Persist(puts=puts, deletes=deletes, sync=sync, token=token):
                    try:
                        self.store.write_batch(puts, deletes, sync=sync)
                        error = ""
                    except errors.SpearError as exc:
                        error = self.store.error or exc.message
                    self.feed(Persisted(token, error))
                case Load(keys=keys, token=token):
                    self.feed(Loaded(token, [self.store.get(k) for k in keys]))
                case CommitSoon():
                    asyncio.get_running_loop().call_soon(self.feed, Commit())
                case Dropped():
                    self.server.protocol_errors += 1

    def _send(self, ident: bytes, msg, payload) -> None:
        try:
            sent = self.server.reply(ident, msg, payload)
        except Exception as exc:  # noqa: BLE001 - e.g. a reply that cannot be encoded
            log.exception("could not send a %s", type(msg).__name__)
            self.server.reply_error(ident, getattr(msg, "id", 0), exc)
            return
        if not sent and isinstance(msg, P.Dispatch):
            self.feed(Undelivered(msg))

    def to_node(self, node_id: str, msg, payload: bytes | None = None) -> bool:
        """Send ``msg`` to a registered node now (False: no route, or not sent)."""
        ident = self.core.identity.route.get(node_id)
        return ident is not None and self.server.reply(ident, msg, payload)

    # ---------------------------------------------------------------- lifecycle

    async def _tick_loop(self) -> None:
        period = min(self.config.sms.heartbeat_interval, self.config.sms.heartbeat_timeout / 4)
        last = time.monotonic()
        while True:
            await asyncio.sleep(period)
            mono = time.monotonic()
            # a stall reported already (see _awake_now) is not reported again
            lag = mono - max(last, self._stall_reported) - period
            last = self._awake = mono
            try:
                if not self.store.healthy:
                    self.store.probe()
                self.feed(Tick(lag, self.store.error))
                memory.trim()  # at most every few seconds: see spear.memory
            except Exception:  # never let housekeeping kill the daemon
                log.exception("node tick failed")

    def reload_node_keys(self) -> None:
        """Re-read ``[security] node_keys_dir``: admit its new keys, refuse removed ones."""
        keys = read_keys_dir(self.config.security.node_keys_dir)
        if keys is not None:
            self.security.admit_node_keys(keys)

    async def _keys_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.security.node_keys_poll)
            try:
                self.reload_node_keys()
            except Exception:  # a bad file is skipped inside; this is the unforeseen
                log.exception("reading the node keys directory failed")

    async def _task_loop(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            try:
                self._awake_now()
                self.feed(Upkeep())
            except Exception:
                log.exception("task tick failed")

    async def start(self) -> str:
        """Bind and start serving; returns the bound address."""
        if self.security.enabled:
            if self.config.security.node_keys_dir:
                self.reload_node_keys()
            start_authenticator(context(), self.security)
            log.info("CURVE on: %d authorized key(s)", len(self.security.roles))
        else:
            warn_open("SMS")
            if self.config.security.node_keys_dir:
                log.warning("[security] node_keys_dir is ignored: CURVE is off")
        self.address = self.server.bind(self.config.sms.listen)
        self.server.start()
        self._awake = self._stall_reported = time.monotonic()  # recovery was no stall
        self._tickers = [asyncio.ensure_future(self._tick_loop()),
                         asyncio.ensure_future(self._task_loop())]
        if self.security.enabled and self.config.security.node_keys_dir:
            self._tickers.append(asyncio.ensure_future(self._keys_loop()))
            try:
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload_node_keys)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests embed the SMS)
                pass
        self._stopping = asyncio.Event()
        if self.config.sms.metrics_port >= 0:
            srv = self.metrics.serve(self.config.sms.metrics_host, self.config.sms.metrics_port)
            log.info("metrics on %s", srv.url)
        log.info("SMS listening on %s (store %s at %s)", self.address,
                 self.config.storage.backend, self.config.storage.path)
        return self.address

    async def close(self) -> None:
        """Stop serving, write what is still in memory, close the store."""
        for t in self._tickers:
            t.cancel()
        if self.config.security.node_keys_dir:
            try:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            except (NotImplementedError, RuntimeError):
                pass
        await self.server.finish(timeout=0.5)
        self.server.close(linger_ms=CLOSE_LINGER_MS)
        self.feed(Stopping())
        self.store.close()
        await asyncio.to_thread(self.metrics.close)
        await asyncio.to_thread(self.core.tasks.tracer.close)  # sends the spans still buffered
        log.info("SMS stopped")
