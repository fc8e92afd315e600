"""Giving memory back to the system after a burst of big payloads.

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

_malloc_trim = None
_looked = False
_last = float("-inf")


def _function():
    global _malloc_trim, _looked
    if not _looked:
        _looked = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _malloc_trim = libc.malloc_trim
            _malloc_trim.argtypes = [ctypes.c_size_t]
            _malloc_trim.restype = ctypes.c_int
        except (OSError, AttributeError):
            _malloc_trim = None
    return _malloc_trim


def trim(now: float | None = None) -> bool:
    """Return free heap pages to the system, unless done less than PERIOD ago.

    Returns whether glibc returned any memory (False where there is no glibc).
    """
    global _last
    now = time.monotonic() if now is None else now
    if now - _last < PERIOD:
        return False
    _last = now
    fn = _function()
    return bool(fn(0)) if fn is not None else False
