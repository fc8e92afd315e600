"""A ROUTER socket that decodes, validates and dispatches Spear messages.

Used by the SMS (its broker socket) and by each Spearlet (its direct
invocation socket). Garbage never reaches a handler: a frame list that fails
to decode is answered with an ``ErrorReply`` (INVALID_ARGUMENT) and counted.
A handler that raises gets its error sent back as a typed reply; the loop
keeps serving.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, Callable

import msgspec
import zmq

from .. import errors, protocol
from ..roles import allowed
from .endpoint import Endpoint

_loose = msgspec.msgpack.Decoder()


def request_id_of(frames: list) -> int:
    """Best effort: the request id of a frame list that failed to decode (else 0)."""
    try:
        obj = _loose.decode(frames[1])
        rid = obj.get("id", 0) if isinstance(obj, dict) else 0
        return rid if type(rid) is int and 0 <= rid < 2**63 else 0
    except Exception:
        return 0

log = logging.getLogger("spear.mesh")

Handler = Callable[[bytes, Any, Any], Any]


class RouterServer:
    """Dispatch decoded requests to ``handlers[type(msg)](ident, msg, payload)``.

    A handler may reply itself with :meth:`reply`, or return a message
    (optionally ``(message, payload)``) which is sent back to the caller, or
    return a coroutine, which runs as a task and whose result is sent back.
    """

    def __init__(self, name: str, handlers: dict[type, Handler], *, security=None) -> None:
        self.name = name
        self.handlers = handlers
        self.endpoint = Endpoint(zmq.ROUTER, self._on_frames, name=name)
        self.security = security if security is not None and security.enabled else None
        if self.security is not None:
            self.security.serve(self.endpoint.sock)
            self.endpoint.with_user = True
        self.protocol_errors = 0
        self.denied = 0
        #: role and public key (z85) of the caller of the message being handled
        #: (CURVE only; empty on an open socket)
        self.caller_role = ""
        self.caller_key = ""
        #: routing id -> the key that first spoke on it (CURVE only); a message on
        #: a routing id from another key is refused (see _check_route)
        self.route_keys: dict[bytes, str] = {}
        self.tasks: set[asyncio.Task] = set()

    def bind(self, addr: str) -> str:
        return self.endpoint.bind(addr)

    def start(self) -> None:
        self.endpoint.start()

    async def finish(self, timeout: float) -> None:
        """Let handlers still running (a wait whose execution just ended) answer."""
        pending = [t for t in self.tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def close(self, linger_ms: int = 0) -> None:
        for t in list(self.tasks):
            t.cancel()
        self.endpoint.close(linger_ms)

    # ------------------------------------------------------------- sending

    def reply(self, ident: bytes, msg: Any, payload: bytes | None = None) -> bool:
        """Send one message to the peer with routing identity ``ident``."""
        frames = protocol.encode(msg, payload)
        frames.insert(0, ident)
        return self.endpoint.send(frames)

    def reply_error(self, ident: bytes, rid: int, exc: BaseException) -> None:
        self.reply(ident, protocol.error_reply(rid, exc))

    # ------------------------------------------------------------- receiving

    def _on_frames(self, frames: list, user: str | None = None) -> None:
        if len(frames) < 2:
            self.protocol_errors += 1
            return
        ident = frames[0]
        body = frames[1:]
        try:
            msg, payload = protocol.decode(body)
        except errors.ProtocolError as exc:
            self.protocol_errors += 1
            log.debug("%s: bad frames from %r: %s", self.name, ident, exc)
            self.reply(ident, protocol.ErrorReply(
                id=request_id_of(body), code=exc.code, message=exc.message))
            return
        if self.security is not None:
            from .security import parse_user

            role, key = parse_user(user)
            role = self.security.role_now(role, key)  # a key removed since the handshake
            if not self._check_route(ident, key):
                return
            if not allowed(role, type(msg)):
                self.denied += 1
                if not isinstance(msg, protocol.ErrorReply):
                    self.reply(ident, protocol.ErrorReply(
                        id=getattr(msg, "id", 0), code="PERMISSION_DENIED",
                        message=f"role {role or 'none'!r} may not send {type(msg).__name__}"))
                return
            self.caller_role = role
            self.caller_key = key
        handler = self.handlers.get(type(msg))
        if handler is None:
            self.protocol_errors += 1
            if not isinstance(msg, protocol.ErrorReply):  # never answer an error
                self.reply(ident, protocol.ErrorReply(
                    id=getattr(msg, "id", 0), code="INVALID_ARGUMENT",
                    message=f"{type(msg).__name__} is not accepted by {self.name}"))
            return
        try:
            out = handler(ident, msg, payload)
        except Exception as exc:  # noqa: BLE001 - becomes a typed reply
            if not isinstance(exc, errors.SpearError):
                log.exception("%s: handler for %s failed", self.name, type(msg).__name__)
            self.reply_error(ident, msg.id, exc)
            return
        if out is None:
            return
        if inspect.iscoroutine(out):
            task = asyncio.ensure_future(self._finish(ident, msg.id, out))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        self._send_out(ident, out)

    def _check_route(self, ident: bytes, key: str) -> bool:
        """A routing id belongs to the key that first used it, for the socket's life.

        With ROUTER_HANDOVER off libzmq already refuses a second connection
        with a routing id in use; this catches the rest (a routing id reused
        by another key after its owner left) so one peer never speaks, or is
        answered, in another's name.
        """
        owner = self.route_keys.get(ident)
        if owner is None:
            if len(self.route_keys) >= 262_144:  # bounded: live peers re-bind on their next message
                self.route_keys.clear()
            self.route_keys[ident] = key
            return True
        if owner == key:
            return True
        log.warning("%s: refused a message on routing id %r from key %s: that routing id "
                    "belongs to key %s", self.name, ident, key[:12] + "...", owner[:12] + "...")
        return False

    def _send_out(self, ident: bytes, out: Any) -> None:
        try:
            if isinstance(out, tuple):
                self.reply(ident, out[0], out[1])
            else:
                self.reply(ident, out)
        except Exception as exc:  # noqa: BLE001 - e.g. a reply that cannot be encoded
            log.exception("%s: could not send a reply", self.name)
            self.reply_error(ident, getattr(out[0] if isinstance(out, tuple) else out, "id", 0), exc)

    async def _finish(self, ident: bytes, rid: int, coro) -> None:
        try:
            out = await coro
        except asyncio.CancelledError:
            self.reply_error(ident, rid, errors.Unavailable(f"{self.name} is shutting down"))
            raise
        except Exception as exc:  # noqa: BLE001
            if not isinstance(exc, errors.SpearError):
                log.exception("%s: async handler failed", self.name)
            self.reply_error(ident, rid, exc)
            return
        if out is not None:
            self._send_out(ident, out)
