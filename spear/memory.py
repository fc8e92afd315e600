"""Big payload buffers without page-fault churn, and memory given back after a burst.

By default glibc serves every allocation over 128 KiB with a fresh ``mmap``
and unmaps it on free, and raises that threshold on its own after some frees:
a daemon moving 1 MiB payloads then pays ~256 page faults (and the zeroing of
each page) per buffer on some calls and none on others, which makes big-payload
latency bimodal. :func:`tune` fixes both thresholds once at daemon start, so
buffers up to 32 MiB come from the heap and their pages are reused; what they
leave free is returned by :func:`trim`.

glibc's allocator keeps the memory big frees leave inside its heap (it only
returns the heap's top, and raises its own mmap threshold after big frees),
so a daemon that moved a few hundred 16 MiB payloads stays at hundreds of MiB
long after. :func:`trim` asks glibc (``malloc_trim``) to return every free
page; the daemons call it from their periodic upkeep, at most every
:data:`PERIOD` seconds. Elsewhere (another libc) it does nothing. Imports
nothing of Spear.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

#: the least time between two trims, seconds
PERIOD = 5.0

#: allocations at least this big still get their own mmap (glibc's largest
#: allowed threshold on 64-bit): a 16 MiB payload and its copies come from the heap
MMAP_THRESHOLD = 32 << 20
#: free memory at the heap's top kept for reuse between trims (not returned on
#: every free, which would page-fault it back in on the next big payload)
TRIM_THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3

_libc = None
_looked = False
_last = float("-inf")


def _glibc():
    """glibc's ``malloc_trim`` and ``mallopt``, or None elsewhere."""
    global _libc, _looked
    if not _looked:
        _looked = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            libc.malloc_trim.restype = ctypes.c_int
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.mallopt.restype = ctypes.c_int
            _libc = libc
        except (OSError, AttributeError):
            _libc = None
    return _libc


def tune() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (a daemon, at start).

    Returns whether glibc took both (False where there is no glibc).
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) \
        and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def trim(now: float | None = None) -> bool:
    """Return free heap pages to the system, unless done less than PERIOD ago.

    Returns whether glibc returned any memory (False where there is no glibc).
    """
    global _last
    now = time.monotonic() if now is None else now
    if now - _last < PERIOD:
        return False
    _last = now
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
