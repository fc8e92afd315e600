"""ZeroMQ endpoints driven by the asyncio event loop.

Why not one ``await sock.recv_multipart()`` per message: each await costs a
future, a wake-up and a trip through the loop. Measured on a 2-core machine,
a broker built that way forwards 7-12k round trips/s; one that wakes on the
socket's file descriptor and drains every waiting message with NOBLOCK
forwards 32-36k/s. This module does the latter.

ZMQ's FD is edge-triggered and also changes state when we *send*, so after
any send made outside the read callback we schedule one more drain.

Batches. Messages sent to one peer while the loop is busy (a drain handling
many requests, a client firing many calls) are coalesced into one zmq
message of three frames, sent when the current callbacks are done::

    [BATCH_PROTOCOL, index, blob]

``blob`` is every message's body and payload back to back; ``index`` has two
little-endian u32 per message: the body's length, and the payload's length
plus one (0: no payload). Three frames instead of two per message: pyzmq
and libzmq cost about a microsecond per frame on each side.
The receiver splits it back into ``[PROTOCOL, body, (payload)]`` messages,
each decoded and validated on its own; a malformed envelope is handed on
as is, so the peer gets the protocol error. A DEALER batches to its peer
(always a Spear ROUTER); a ROUTER batches only to peers that have sent it a
batch, so plain single-message peers (scripts, the blocking client, other
languages) never receive one. Batching changes the number of zmq messages,
not what each carries: per-message cost (syscalls, frames, wake-ups) is
shared by the batch. ``SPEAR_NO_BATCH=1`` turns it off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from typing import Callable

import zmq

from .. import protocol
from ..config import batching_disabled

log = logging.getLogger("spear.mesh")

#: messages handled per wake-up before yielding to other callbacks
BATCH = 512
#: how long a daemon's socket keeps sending replies already queued when it closes
CLOSE_LINGER_MS = 500

# plain ints: pyzmq's IntFlag arithmetic costs more than the syscalls it guards
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE) | _NOBLOCK
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_RCVMORE = int(zmq.RCVMORE)

#: first frame of a batch of messages (see the module docstring)
BATCH_PROTOCOL = protocol.PROTOCOL + b"+"
#: ZMTP PING interval on ROUTER sockets; a connection silent for 3 of them is dropped
ZMTP_HEARTBEAT_MS = 1000


def random_routing_id() -> bytes:
    """A routing id no other peer can guess (17 bytes; never starts with 0,
    which libzmq keeps for the ids it makes itself)."""
    return b"r" + os.urandom(16)


#: most messages in one batch, and bytes of bodies and payloads in one batch
MAX_BATCH = 256
MAX_BATCH_BYTES = 1 << 20
#: messages with a bigger payload are never batched (sent on their own, in order)
BATCH_PAYLOAD_LIMIT = 64 * 1024
BATCHING = not batching_disabled()
_PROTO = protocol.PROTOCOL


def pack_batch(msgs: list) -> list:
    """``[BATCH_PROTOCOL, index, blob]`` for messages given as ``[body]`` or ``[body, payload]``."""
    lens = []
    parts = []
    for m in msgs:
        body = m[0]
        parts.append(body)
        if len(m) == 2:
            parts.append(m[1])
            lens.append(len(body))
            lens.append(len(m[1]) + 1)
        else:
            lens.append(len(body))
            lens.append(0)
    return [BATCH_PROTOCOL, struct.pack(f"<{len(lens)}I", *lens), b"".join(parts)]


def unbatch(frames: list, offset: int) -> list[list] | None:
    """Split a batch (its marker at ``frames[offset]``) into single messages.

    Each comes back as ``frames[:offset] + [PROTOCOL, body, (payload)]``;
    None if the envelope is malformed.
    """
    if len(frames) != offset + 3:
        return None
    index = frames[offset + 1]
    blob = frames[offset + 2]
    k = len(index)
    if k % 8 or not 8 <= k <= 8 * MAX_BATCH:
        return None
    lens = struct.unpack(f"<{k // 4}I", index)
    head = frames[:offset]
    out = []
    pos = 0
    total = len(blob)
    for i in range(0, len(lens), 2):
        end = pos + lens[i]
        plen = lens[i + 1]
        if plen:
            pend = end + plen - 1
            if pend > total:
                return None
            out.append([*head, _PROTO, blob[pos:end], blob[end:pend]])
            pos = pend
        else:
            if end > total:
                return None
            out.append([*head, _PROTO, blob[pos:end]])
            pos = end
    if pos != total:
        return None
    return out


def _raw_getsockopt():
    """The backend's getsockopt: pyzmq's wrapper turns EVENTS into an enum per call."""
    for cls in zmq.Socket.__mro__:
        if cls.__module__.startswith("zmq.backend") and hasattr(cls, "get"):
            return cls.get
    return zmq.Socket.getsockopt


_get = _raw_getsockopt()


def _raw_send():
    """The backend's send: pyzmq's Python wrapper doubles the cost of a small send."""
    for cls in zmq.Socket.__mro__:
        if cls.__module__.startswith("zmq.backend") and "send" in cls.__dict__:
            return cls.send
    return zmq.Socket.send


_send = _raw_send()
#: immutable frames at least this big are sent without a copy (libzmq keeps a
#: reference until they are on the wire); smaller ones are cheaper to copy
ZERO_COPY_MIN = 64 * 1024

_ctx: zmq.Context | None = None


def _payload(frame: zmq.Frame):
    """A received payload frame as delivered to a ``keep_payloads`` owner: big ones
    stay frames (their bytes are never copied), small ones become bytes (cheaper)."""
    return frame if len(frame) >= ZERO_COPY_MIN else frame.bytes


def context() -> zmq.Context:
    """The one zmq context of this process."""
    global _ctx
    if _ctx is None or _ctx.closed:
        _ctx = zmq.Context()
    return _ctx


class Endpoint:
    """One zmq socket whose incoming multipart messages go to ``on_frames``.

    ``on_frames(frames)`` is called synchronously from the loop's reader
    callback; it must not block. It may call :meth:`send`.
    """

    def __init__(
        self,
        sock_type: int,
        on_frames: Callable[[list], None],
        *,
        name: str = "",
        hwm: int = 100_000,
    ) -> None:
        self.sock = context().socket(sock_type)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        # Frames over the cap make libzmq drop the peer's connection: a huge
        # frame never reaches Python, let alone the decoder.
        self.sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_PAYLOAD + 4096)
        self.routed = sock_type == zmq.ROUTER
        if self.routed:
            # No ROUTER_HANDOVER: a connection that claims a routing id already
            # in use is refused, so no peer can take over another's route (and
            # its replies and dispatches). Dead connections are found by ZMTP
            # heartbeats, which frees their routing ids within seconds for the
            # owner's reconnect.
            self.sock.setsockopt(zmq.ROUTER_HANDOVER, 0)
            self.sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_MS)
            self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * ZMTP_HEARTBEAT_MS)
            self.sock.setsockopt(zmq.HEARTBEAT_TTL, 3 * ZMTP_HEARTBEAT_MS)
        self.on_frames = on_frames
        #: deliver each message's ZAP User-Id (the caller's role) as a 2nd argument
        self.with_user = False
        #: deliver payloads of ZERO_COPY_MIN bytes or more as the zmq.Frame that
        #: received them (no copy; sent on as is, libzmq shares the buffer): only
        #: for owners whose every payload consumer takes any bytes-like object
        self.keep_payloads = False
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._drain_pending = False
        self.received = 0
        self.sent = 0
        self.dropped = 0
        self.handler_errors = 0
        #: coalesce outgoing messages (see the module docstring)
        self.batching = BATCHING
        #: ROUTER: identities of peers that sent a batch (they understand them)
        self.batch_peers: set[bytes] = set()
        self._pending: dict[bytes | None, list] = {}
        self._pending_bytes: dict[bytes | None, int] = {}
        self._flush_pending = False
        self.batches_sent = 0
        self.batches_received = 0

    # -------------------------------------------------------------- lifecycle

    def bind(self, addr: str) -> str:
        """Bind and return the concrete address (``tcp://127.0.0.1:0`` picks a port)."""
        self.sock.bind(addr)
        return self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def connect(self, addr: str) -> None:
        self.sock.connect(addr)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Attach to the event loop and drain anything already waiting."""
        self.loop = loop or asyncio.get_running_loop()
        self._fd = self.sock.getsockopt(zmq.FD)
        self.loop.add_reader(self._fd, self._drain)
        self.loop.call_soon(self._drain)

    def close(self, linger_ms: int = 0) -> None:
        """Close now; ``linger_ms`` lets messages already queued leave for that long
        (libzmq keeps sending them in the background; 0 drops them)."""
        if self._pending and not self.sock.closed:
            self._flush()
        if self.loop is not None and self._fd is not None:
            try:
                self.loop.remove_reader(self._fd)
            except Exception:  # loop already closed
                pass
            self._fd = None
        if not self.sock.closed:
            self.sock.close(linger=linger_ms)

    # -------------------------------------------------------------- I/O

    def _drain(self) -> None:
        self._drain_pending = False
        sock = self.sock
        if sock.closed:
            return
        if self.with_user:
            return self._drain_with_user()
        recv = sock.recv
        get = _get
        handle = self.on_frames
        # index of the payload frame (after the routing id, PROTOCOL and body)
        at = (3 if self.routed else 2) if self.keep_payloads else -1
        n = 0
        while n < BATCH:
            try:
                # asking EVENTS is cheaper than letting recv raise Again
                if not get(sock, _EVENTS) & _POLLIN:
                    return
                frames = [recv(_NOBLOCK)]
                while get(sock, _RCVMORE):
                    if len(frames) == at and frames[at - 2] == _PROTO:
                        frames.append(_payload(recv(_NOBLOCK, False)))
                    else:
                        frames.append(recv(_NOBLOCK))
            except zmq.Again:
                return
            except zmq.ZMQError as exc:  # socket closed under us
                log.debug("%s recv failed: %s", self.name, exc)
                return
            n += 1
            self._deliver(frames, handle)
        # more may be waiting: yield to other callbacks, then continue
        self._schedule_drain()

    def _deliver(self, frames: list, handle: Callable, *extra) -> None:
        """Hand one received zmq message to ``handle`` (each member, if a batch)."""
        self.received += 1
        msgs = (frames,)
        off = 1 if self.routed else 0
        if len(frames) > off + 2 and frames[off] == BATCH_PROTOCOL:
            split = unbatch(frames, off)
            if split is not None:  # malformed: handed on whole, the handler says why
                msgs = split
                self.batches_received += 1
                if off and frames[0] not in self.batch_peers:
                    if len(self.batch_peers) >= 65536:  # bounded: active peers re-add themselves
                        self.batch_peers.clear()
                    self.batch_peers.add(frames[0])
        for m in msgs:
            try:
                handle(m, *extra)
            except Exception:  # a handler bug must never stop the daemon
                self.handler_errors += 1
                log.exception("%s: handler failed", self.name)

    def _drain_with_user(self) -> None:
        """The CURVE path: read frames as zmq.Frame to get their User-Id."""
        sock = self.sock
        for _ in range(BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.debug("%s recv failed: %s", self.name, exc)
                return
            try:
                user = frames[-1].get("User-Id")
            except (zmq.ZMQError, KeyError, AttributeError):
                user = None
            out = [f.bytes for f in frames[:4]]
            if len(frames) == 4 and self.keep_payloads and self.routed and out[1] == _PROTO:
                out[3] = _payload(frames[3])
            self._deliver(out + [f.bytes for f in frames[4:]], self.on_frames, user)
        self._schedule_drain()

    def _schedule_drain(self) -> None:
        if not self._drain_pending and self.loop is not None:
            self._drain_pending = True
            self.loop.call_soon(self._drain)

    def send(self, frames: list, *, copy: bool = True) -> bool:
        """Send without blocking; returns False (and counts a drop) if it can't.

        Small messages to a peer that understands batches are queued and sent
        (coalesced) once the loop's current callbacks are done: True then
        means queued.
        """
        if self.batching and self.loop is not None:
            off = 1 if self.routed else 0
            dest = frames[0] if off else None
            n = len(frames) - off
            if (n == 2 or n == 3) and frames[off] == _PROTO \
                    and (not off or dest in self.batch_peers):
                size = len(frames[-1]) + (len(frames[-2]) if n == 3 else 0)
                if n == 2 or len(frames[-1]) <= BATCH_PAYLOAD_LIMIT:
                    q = self._pending.get(dest)
                    if q is None:
                        q = self._pending[dest] = []
                        self._pending_bytes[dest] = 0
                    q.append(frames[off + 1:])
                    self._pending_bytes[dest] += size
                    if len(q) >= MAX_BATCH or self._pending_bytes[dest] >= MAX_BATCH_BYTES:
                        self._flush_one(dest)
                    elif not self._flush_pending:
                        self._flush_pending = True
                        self.loop.call_soon(self._flush)
                    return True
            if self._pending and dest in self._pending:
                self._flush_one(dest)  # keep the order of messages to this peer
        return self._send_now(frames, copy)

    def _flush(self) -> None:
        self._flush_pending = False
        for dest in list(self._pending):
            self._flush_one(dest)

    def _flush_one(self, dest: bytes | None) -> None:
        q = self._pending.pop(dest, None)
        self._pending_bytes.pop(dest, None)
        if not q:
            return
        if len(q) == 1:
            frames = [_PROTO, *q[0]]
        else:
            frames = pack_batch(q)
            self.batches_sent += 1
        if dest is not None:
            frames.insert(0, dest)
        if not self._send_now(frames, True) and len(q) > 1:
            self.dropped += len(q) - 1

    def _send_now(self, frames: list, copy: bool) -> bool:
        sock = self.sock
        try:
            # multipart sends are atomic in libzmq: only the first part can hit HWM
            last = len(frames) - 1
            send = _send
            for i in range(last):
                f = frames[i]
                send(sock, f, _SNDMORE_NOBLOCK, len(f) < ZERO_COPY_MIN or type(f) is not bytes)
            f = frames[last]
            send(sock, f, _NOBLOCK, len(f) < ZERO_COPY_MIN or type(f) is not bytes)
            pending = _get(sock, _EVENTS) & _POLLIN
        except zmq.Again:
            self.dropped += 1
            return False
        except zmq.ZMQError as exc:
            self.dropped += 1
            log.debug("%s send failed: %s", self.name, exc)
            return False
        self.sent += 1
        # the send may have consumed the FD's edge: if input is waiting, drain it
        if pending:
            self._schedule_drain()
        return True
