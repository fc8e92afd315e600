"""Stdio plumbing of the ``wasm`` runtime: how a WASI guest's stdout and stderr
reach Spear.

Two mechanisms, both handing wasmtime a ``/proc/self/fd/N`` path to open (we
never use wasmtime-py's Python output callbacks: wasmtime calls them on its
tokio threads, and at interpreter exit that made the process panic):

* **Pipes**, for calls that run on the thread pool: the event loop reads them
  with ``add_reader`` (:class:`Pump`) while the guest runs, so stderr reaches
  ``on_log`` live and stdout is capped live (:class:`Output`).
* **Capture files** (:class:`Capture`), for short WASI commands that run
  inline on the event loop: a reusable pair of in-memory ``memfd`` files.
  wasmtime opens them with ``O_TRUNC`` for each call, the guest writes them
  from native code without any reader, and the loop reads them once the call
  has ended. Nothing is created per call but the two ``open`` calls wasmtime
  makes. The size cap is checked after the call and, during a long call, by
  the epoch ticker thread (:meth:`Captures.enforce`): a file past the cap is
  sealed against growth (``F_SEAL_GROW``), so the guest's next write fails
  with ``EPERM``, much like the ``EPIPE`` of an overflowing pipe.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Callable

from ..base import STDERR_TAIL, tail_text

log = logging.getLogger("spear.runtimes.wasm")

__all__ = [
    "CHUNK", "Capture", "Captures", "ErrTail", "FdBox", "Output", "Pump", "capture_supported",
    "close_all", "deliver", "drain", "fd_path", "grow_pipe", "open_pipes", "safe_sink",
]

_MIB = 1 << 20
#: the most read from a pipe, or handed to ``on_log``, at once
CHUNK = 1 << 16
#: a capture file bigger than this after a call is emptied at once, so a big
#: output does not stay in memory until the next call
_SHRINK = _MIB

LogFn = Callable[[bytes], None]


def fd_path(fd: int) -> bytes:
    """A path that opens (a new description of) the file behind ``fd``."""
    return b"/proc/self/fd/%d" % fd


# --------------------------------------------------------------------------
# pipes (pool calls)
# --------------------------------------------------------------------------


def grow_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer (Linux), so big outputs need fewer wakeups."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _MIB)
    except (ImportError, OSError):
        pass


def drain(fd: int, sink: LogFn | None) -> None:
    """Read everything currently in a non-blocking pipe."""
    while True:
        try:
            chunk = os.read(fd, CHUNK)
        except OSError:  # BlockingIOError: nothing more for now
            return
        if not chunk:
            return
        if sink is not None:
            sink(chunk)


def safe_sink(on_log: LogFn | None) -> LogFn | None:
    """``on_log`` wrapped so that an exception in it never breaks the call."""
    if on_log is None:
        return None

    def sink(chunk: bytes) -> None:
        try:
            on_log(chunk)
        except Exception:  # a broken log consumer must not break the call
            log.exception("on_log callback failed")

    return sink


def deliver(data: bytes, on_log: LogFn | None) -> None:
    """Hand ``data`` to ``on_log`` in chunks of at most :data:`CHUNK` bytes;
    an exception in ``on_log`` is logged, never raised."""
    if on_log is None or not data:
        return
    try:
        if len(data) <= CHUNK:
            on_log(data)
            return
        view = memoryview(data)
        for i in range(0, len(data), CHUNK):
            on_log(bytes(view[i:i + CHUNK]))
    except Exception:  # a broken log consumer must not break the call
        log.exception("on_log callback failed")


def open_pipes(big_stdout: bool = False) -> tuple[int, int, "FdBox"]:
    """The stdout and stderr pipes of a pooled call: their non-blocking read
    ends, and a box with the write ends for the worker to hand to wasmtime."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    for fd in (out_r, err_r):
        os.set_blocking(fd, False)
    if big_stdout:
        grow_pipe(out_r)
    return out_r, err_r, FdBox((out_w, err_w))


class Output:
    """Collects a command's stdout up to a cap; past it the pipe is closed so
    the guest's writes fail with EPIPE and the call ends as ResourceExhausted."""

    __slots__ = ("chunks", "size", "cap", "overflow")

    def __init__(self, cap: int) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.cap = cap
        self.overflow = False

    def __call__(self, chunk: bytes) -> None:
        if self.overflow:
            return
        self.size += len(chunk)
        if self.size > self.cap:
            self.overflow = True
            self.chunks.clear()
            return
        self.chunks.append(chunk)


class ErrTail:
    """Passes a command's stderr on to ``sink`` and keeps its last few KiB
    (what a failed call reports as ``details["stderr"]``)."""

    __slots__ = ("buf", "sink")

    def __init__(self, sink: LogFn | None) -> None:
        self.buf = bytearray()
        self.sink = sink

    def __call__(self, chunk: bytes) -> None:
        self.buf += chunk
        if len(self.buf) > 2 * STDERR_TAIL:
            del self.buf[:-STDERR_TAIL]
        if self.sink is not None:
            self.sink(chunk)

    def text(self) -> str:
        """The tail kept, as text."""
        return tail_text(bytes(self.buf))


class Pump:
    """Reads the stdout/stderr pipes of a running call on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fds: list[tuple[int, LogFn | None]]) -> None:
        self.loop = loop
        self.fds = fds
        self.active: list[int] = []
        for fd, sink in fds:
            loop.add_reader(fd, self._on_readable, fd, sink)
            self.active.append(fd)

    def _on_readable(self, fd: int, sink: LogFn | None) -> None:
        try:
            chunk = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._stop(fd)
            return
        if sink is not None:
            sink(chunk)
            if isinstance(sink, Output) and sink.overflow:
                self._stop(fd)
                # closing the read end makes further guest writes fail (EPIPE)
                try:
                    os.close(fd)
                except OSError:
                    pass
                self.fds = [(f, s) for f, s in self.fds if f != fd]

    def _stop(self, fd: int) -> None:
        if fd in self.active:
            self.active.remove(fd)
            self.loop.remove_reader(fd)

    def finish(self) -> None:
        """Stop watching and read what is left (the call has ended)."""
        for fd, sink in self.fds:
            self._stop(fd)
            drain(fd, sink)


class FdBox:
    """Hands the write ends of a call's pipes to exactly one owner: the worker
    that runs the call, or the coroutine if the worker never started."""

    __slots__ = ("fds", "lock")

    def __init__(self, fds: tuple[int, ...]) -> None:
        self.fds: tuple[int, ...] | None = fds
        self.lock = threading.Lock()

    def take(self) -> tuple[int, ...] | None:
        """The descriptors, to the first caller only (later callers: None)."""
        with self.lock:
            fds, self.fds = self.fds, None
            return fds


def close_all(fds: tuple[int, ...] | None) -> None:
    """Close every descriptor in ``fds`` (None: nothing), ignoring errors."""
    for fd in fds or ():
        try:
            os.close(fd)
        except OSError:
            pass


# --------------------------------------------------------------------------
# capture files (inline commands)
# --------------------------------------------------------------------------

try:
    import fcntl as _fcntl

    _SEAL = (_fcntl.F_ADD_SEALS, _fcntl.F_SEAL_GROW)
except (ImportError, AttributeError):  # pragma: no cover - not Linux
    _fcntl = None  # type: ignore[assignment]
    _SEAL = None


class Capture:
    """A reusable pair of in-memory files for the stdout and stderr of inline
    command calls. One call uses a pair at a time; the runtime keeps a short
    free list of them."""

    __slots__ = ("out", "err", "out_path", "err_path", "sealed")

    def __init__(self) -> None:
        flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
        self.out = os.memfd_create("spear-wasm-stdout", flags)
        try:
            self.err = os.memfd_create("spear-wasm-stderr", flags)
        except BaseException:
            os.close(self.out)
            raise
        self.out_path = fd_path(self.out)
        self.err_path = fd_path(self.err)
        self.sealed = False

    def enforce(self, cap: int) -> None:
        """Seal a file that has grown past ``cap`` against further growth.
        (epoch ticker thread, under the lock of :class:`Captures`)"""
        for fd in (self.out, self.err):
            try:
                if os.lseek(fd, 0, os.SEEK_END) > cap and _SEAL is not None:
                    _fcntl.fcntl(fd, _SEAL[0], _SEAL[1])
                    self.sealed = True  # never reuse this pair
            except OSError:  # pragma: no cover - defensive
                self.sealed = True

    def read(self, fd: int, limit: int, partial: bool) -> tuple[bytes, int]:
        """``(data, full size)`` of one file after a call: all of it, or when
        it is bigger than ``limit`` its first ``limit`` bytes if ``partial``
        (else nothing). A big file is emptied afterwards to free the memory."""
        size = os.lseek(fd, 0, os.SEEK_END)
        if not size:
            return b"", 0
        data = b""
        if size <= limit or partial:
            data = os.pread(fd, min(size, limit), 0)
        if size > _SHRINK:
            try:
                os.ftruncate(fd, 0)
            except OSError:  # pragma: no cover - defensive: drop the pair
                self.sealed = True
        return data, size

    def close(self) -> None:
        """Close both files."""
        close_all((self.out, self.err))


class Captures:
    """The capture files of inline commands: a short free list of idle pairs
    (``spare``), and the pairs in use (``active``), whose size the epoch
    ticker bounds to ``limit`` bytes (:meth:`enforce`)."""

    def __init__(self, limit: int, keep: int = 4) -> None:
        self.limit = limit
        self.spare: list[Capture] = []
        self.active: set[Capture] = set()
        self._keep = keep
        self._lock = threading.Lock()

    def take(self) -> Capture:
        """An idle pair, or a new one (``OSError`` if none can be made)."""
        return self.spare.pop() if self.spare else Capture()

    def watch(self, cap: Capture) -> None:
        """Bound ``cap`` while a call writes it."""
        with self._lock:
            self.active.add(cap)

    def unwatch(self, cap: Capture) -> None:
        """The call that wrote ``cap`` has ended."""
        with self._lock:
            self.active.discard(cap)

    def give_back(self, cap: Capture, keep: bool = True) -> None:
        """Keep ``cap`` for a later call, or close it (sealed, not ``keep``, or enough kept)."""
        if cap.sealed or not keep or len(self.spare) >= self._keep:
            cap.close()
        else:
            self.spare.append(cap)

    def enforce(self) -> None:
        """Seal the files in use that have grown past the limit (ticker thread)."""
        if self.active:
            with self._lock:
                for cap in self.active:
                    cap.enforce(self.limit)

    def close(self) -> None:
        """Close the idle pairs."""
        while self.spare:
            self.spare.pop().close()


_CAPTURE_OK: bool | None = None


def capture_supported() -> bool:
    """True if memfd capture files work here (Linux with ``/proc`` mounted)."""
    global _CAPTURE_OK
    if _CAPTURE_OK is None:
        ok = False
        if hasattr(os, "memfd_create") and _SEAL is not None:
            try:
                cap = Capture()
            except OSError:
                cap = None
            if cap is not None:
                try:
                    fd = os.open(cap.out_path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
                    try:
                        ok = os.write(fd, b"ok") == 2 and os.pread(cap.out, 2, 0) == b"ok"
                    finally:
                        os.close(fd)
                except OSError:
                    ok = False
                finally:
                    cap.close()
        _CAPTURE_OK = ok
    return _CAPTURE_OK
