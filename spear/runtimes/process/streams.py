"""The byte streams of a function's processes: pipes, output caps, the stderr tail.

Pipes are enlarged (:func:`grow_pipe`) so a large input or output crosses in
few writes; a call's output is capped (:data:`MAX_OUTPUT`, :func:`too_big`);
stderr is streamed to the caller's log sink (:func:`emit`) and its last few
KiB kept for error details (:class:`Tail`).
"""

from __future__ import annotations

import fcntl
import logging
import os

from ... import errors
from ...protocol import MAX_PAYLOAD
from ..base import STDERR_TAIL as _TAIL, LogSink

log = logging.getLogger(__name__)

MIB = 1 << 20
#: Largest output of a call (one-shot stdout, a worker's reply payload): the
#: wire's payload cap. A node may set less ([runtimes.process] max_output_mb),
#: a function less again (limits.max_output_mb).
MAX_OUTPUT = MAX_PAYLOAD

#: input/output pipes of functions are enlarged to this (Linux default: 64 KiB),
#: so a 1 MiB input or output crosses in one write instead of sixteen wake-ups.
#: Only as root: an unprivileged user's pipes share a 64 MiB quota, past which
#: the kernel shrinks every new pipe of that user to one page.
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def grow_pipe(fd: int) -> None:
    """Enlarge the pipe ``fd`` to :data:`PIPE_SIZE` (as root; elsewhere a no-op)."""
    if os.geteuid() != 0:
        return
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:  # not Linux, or a limit: the default size still works
        pass


def close_fd(fd: int) -> None:
    """Close ``fd``, ignoring one that is already closed."""
    try:
        os.close(fd)
    except OSError:
        pass


def open_proc(pid: int, name: str, flags: int) -> int:
    """Open ``/proc/<pid>/<name>`` close-on-exec; -1 where that is not possible."""
    try:
        return os.open(f"/proc/{pid}/{name}", flags | os.O_CLOEXEC)
    except OSError:  # no procfs, or not allowed: usage figures become 0
        return -1


class Tail:
    """The last few KiB of a byte stream (stderr, for error details)."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def add(self, chunk: bytes) -> None:
        """Append ``chunk``, dropping what falls out of the window."""
        self.buf += chunk
        if len(self.buf) > 2 * _TAIL:
            del self.buf[: len(self.buf) - _TAIL]

    def get(self) -> bytes:
        """The last few KiB seen."""
        return bytes(self.buf[-_TAIL:])


def emit(sink: LogSink | None, chunk: bytes) -> None:
    """Hand ``chunk`` to the caller's log sink; a sink that raises is logged, not fatal."""
    if sink is None:
        return
    try:
        sink(chunk)
    except Exception:  # a broken log sink must not break the invocation
        log.exception("on_log callback failed")


def too_big(limit: int) -> errors.ResourceExhausted:
    """The error of a call whose output went past ``limit`` bytes."""
    mib = f"{limit / MIB:g} MiB" if limit % (MIB // 16) == 0 else f"{limit} bytes"
    return errors.ResourceExhausted(
        f"output larger than the limit of {mib}: the function was stopped",
        details={"limit": "max_output_mb", "max_output_bytes": limit})
