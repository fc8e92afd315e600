"""A worker's shared-memory region: big inputs and outputs without the pipes.

A pipe moves a 1 MiB payload in several writes and wake-ups, and the kernel
allocates and frees its pages on every call. A pooled worker that says so in
its ready reply gets big payloads through a region instead: a sealed memfd
made by the Spearlet for that worker alone, passed to it at start as an
inherited descriptor (its number in ``SPEAR_WORKER_REGION``). Spear writes a
big input at offset 0 and sends only its length in the request header; the
worker writes a big output at offset 0 and replies with its length (see
``docs/worker-protocol.md``). Small payloads keep the pipes.

Why this is safe with a hostile worker: the region is sealed at its size
(it can neither shrink, which would make our mapping fault, nor grow), every
length the worker sends is checked against the call's output limit and the
region's size before a byte is read, and the output is copied out once, so
what the worker writes later never changes a result already taken. The
worker reaches no other worker's region, and its pages count against its
own memory limits (tmpfs pages are charged to whoever touches them first).
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os

from ...protocol import MAX_PAYLOAD

log = logging.getLogger(__name__)

#: environment variable naming the region's descriptor in the worker
REGION_VAR = "SPEAR_WORKER_REGION"
#: the word a worker's ready payload carries when it took its region
REGION_WORD = b"region"
#: payloads at least this big go through the region; smaller ones keep the pipes
REGION_MIN = 64 * 1024
#: the region's size: any payload the wire carries (sparse: only pages written cost memory)
REGION_SIZE = MAX_PAYLOAD
#: pages kept between calls (a 1 MiB echo reuses them); a bigger call's pages past
#: this go back to the system after it, so an idle worker holds at most this much
REGION_KEEP = 2 * 1024 * 1024

_SEALS = (getattr(fcntl, "F_SEAL_SHRINK", 0x2) | getattr(fcntl, "F_SEAL_GROW", 0x4)
          | getattr(fcntl, "F_SEAL_SEAL", 0x1))
_F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)


class Region:
    """The Spearlet's side of one worker's region: the memfd and our mapping of it."""

    __slots__ = ("fd", "size", "map", "high")

    def __init__(self, fd: int, size: int, mapping: mmap.mmap) -> None:
        self.fd = fd
        self.size = size
        self.map = mapping
        self.high = 0  # the furthest byte written this call (pages to give back)

    @classmethod
    def create(cls, size: int = REGION_SIZE) -> Region | None:
        """A new sealed region of ``size`` bytes, or None where memfds or seals are missing."""
        try:
            fd = os.memfd_create("spear-worker-region", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except (AttributeError, OSError) as exc:
            log.debug("no worker region: %s", exc)
            return None
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, _F_ADD_SEALS, _SEALS)
            mapping = mmap.mmap(fd, size)
        except OSError as exc:
            os.close(fd)
            log.debug("no worker region: %s", exc)
            return None
        return cls(fd, size, mapping)

    def write(self, data) -> int:
        """Put a call's input at offset 0; returns its length.

        Through ``pwrite``, not the mapping: a page the system cannot give is
        an ``OSError`` here, where a store through the mapping would be SIGBUS.
        """
        n = len(data)
        self.high = max(self.high, n)
        with memoryview(data) as view:
            done = 0
            while done < n:
                done += os.pwrite(self.fd, view[done:], done)
        return n

    def read(self, n: int) -> bytes:
        """A copy of the first ``n`` bytes (``n`` already checked against the size)."""
        self.high = max(self.high, n)
        return self.map[:n]

    def settle(self) -> None:
        """After a call: give back the pages a very big payload used past :data:`REGION_KEEP`."""
        high, self.high = self.high, 0
        if high > REGION_KEEP:
            try:
                end = min(self.size, -(-high // mmap.PAGESIZE) * mmap.PAGESIZE)
                self.map.madvise(mmap.MADV_REMOVE, REGION_KEEP, end - REGION_KEEP)
            except (AttributeError, OSError, ValueError) as exc:  # pragma: no cover - old kernel
                log.debug("cannot release region pages: %s", exc)

    def close(self) -> None:
        """Unmap and close (the worker's own descriptor dies with it)."""
        try:
            self.map.close()
        except (BufferError, ValueError):  # pragma: no cover - a view still exported
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass
