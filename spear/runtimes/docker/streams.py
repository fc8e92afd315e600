"""The stdin/stdout/stderr of a container process, over the engine's socket.

A one-shot container is attached, a pooled call is an exec: either way the
engine hands back one hijacked socket that carries the input one way and,
the other way, stdout and stderr multiplexed in frames (an 8-byte header:
stream kind, then the payload size). :func:`pump` feeds the input and
takes the frames apart.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable

from ..base import STDERR_TAIL

__all__ = ["pump"]

#: inputs up to this size are written inline; larger ones by a writer thread
_INLINE_INPUT = 64 * 1024


def _raw_socket(sock: Any) -> socket.socket:
    """The plain socket under the SDK's wrapper, made blocking."""
    raw = getattr(sock, "_sock", sock)
    raw.settimeout(None)  # the deadline is enforced by killing the container
    return raw


def _send_input(raw: socket.socket, data: bytes) -> None:
    """Write all of ``data``, then half-close: the process reads EOF."""
    try:
        if data:
            raw.sendall(data)
    except OSError:  # the process exited without reading all of its input
        pass
    finally:
        try:
            raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def pump(
    sock: Any, data: bytes, on_stderr: Callable[[bytes], None], max_output: int
) -> tuple[bytes, bytes, bool]:
    """Feed ``data`` to a hijacked attach/exec stream and demultiplex its output.

    Returns ``(stdout, stderr_tail, too_big)``. Input bigger than a socket
    buffer is written by a helper thread so a process that writes before it
    has read everything cannot deadlock us.
    """
    raw = _raw_socket(sock)
    writer = None
    if len(data) <= _INLINE_INPUT:
        _send_input(raw, data)
    else:
        writer = threading.Thread(target=_send_input, args=(raw, data), daemon=True)
        writer.start()
    out = bytearray()
    tail = b""
    buf = bytearray()
    pos = 0
    try:
        while True:
            chunk = raw.recv(256 * 1024)
            if not chunk:
                break
            buf += chunk
            while len(buf) - pos >= 8:
                kind = buf[pos]
                size = int.from_bytes(buf[pos + 4 : pos + 8], "big")
                if len(buf) - pos - 8 < size:
                    break
                payload = bytes(buf[pos + 8 : pos + 8 + size])
                pos += 8 + size
                if kind == 2:
                    tail = (tail + payload)[-STDERR_TAIL:]
                    on_stderr(payload)
                else:
                    out += payload
                    if len(out) > max_output:
                        return bytes(out[:max_output]), tail, True
            if pos > 1 << 20:
                del buf[:pos]
                pos = 0
    finally:
        for closer in (raw, sock, getattr(sock, "_response", None)):
            try:
                if closer is not None:
                    closer.close()
            except Exception:  # already closed through another wrapper
                pass
        if writer is not None:
            writer.join(timeout=5)
    return bytes(out), tail, False
