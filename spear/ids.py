"""Execution ids: UUIDv7 (RFC 9562), unguessable and time-ordered.

An id is 48 bits of Unix milliseconds, a 12-bit counter that keeps ids made
in the same millisecond in order (seeded at random each millisecond), and 62
random bits from ``os.urandom``: 74 bits a caller cannot predict, so an
execution id is not a capability anyone can guess. Shown in full, in the
canonical 36-character form.

Wherever an id is taken, a unique prefix of it is accepted too
(:func:`resolve`): each daemon resolves it against the executions it holds.
"""

from __future__ import annotations

import os
import re
import time
from typing import Collection, Iterable

from .errors import InvalidArgument

#: what a canonical UUIDv7 looks like (lower-case hex)
UUID7_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
_HEX_RE = re.compile(r"[0-9a-f]{1,32}\Z")
#: hex digits (dashes not counted) a prefix needs: fewer would name many ids at once
MIN_PREFIX = 8


#: hex digit -> the variant nibble (``10`` then two of its random bits)
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


class IdMaker:
    """Callable making canonical UUIDv7 strings, monotonic within this process."""

    __slots__ = ("_ms", "_seq", "_head", "_pool", "_at")

    #: random bytes read from the OS at a time (a syscall per id would triple its cost)
    POOL = 8192

    def __init__(self) -> None:
        self._ms = 0
        self._seq = 0
        self._head = ""
        self._pool = ""
        self._at = 2 * self.POOL

    def _random_hex(self, digits: int) -> str:
        """``digits`` random hex digits from the pool, kept as text: an id is
        made by slicing it, not by formatting integers."""
        at = self._at
        if at + digits > 2 * self.POOL:
            # re-read after fork too: see _after_fork below
            self._pool = os.urandom(self.POOL).hex()
            at = 0
        self._at = at + digits
        return self._pool[at:at + digits]

    def _tick(self, ms: int) -> None:
        """A new millisecond ``ms``: its time digits, and the counter seeded below half."""
        self._ms = ms
        self._head = "%08x-%04x-7" % (ms >> 16, ms & 0xFFFF)

    def __call__(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms > self._ms:
            self._tick(ms)
            self._seq = int(self._random_hex(3), 16) & 0x7FF  # room to count up
        else:
            self._seq += 1
            if self._seq > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                self._tick(self._ms + 1)
                self._seq = 0
        # 62 random bits: two in the variant nibble, 12 beside it, 48 in the last group
        r = self._random_hex(16)
        return f"{self._head}{self._seq:03x}-{_VARIANT[r[0]]}{r[1:4]}-{r[4:]}"

    def _after_fork(self) -> None:
        # a forked child must never hand out the parent's unused random bytes
        self._at = 2 * self.POOL


new_id = IdMaker()
os.register_at_fork(after_in_child=new_id._after_fork)


def is_uuid7(s: str) -> bool:
    """Whether ``s`` is a canonical UUIDv7 string."""
    return UUID7_RE.match(s) is not None


def is_prefix(text: str) -> bool:
    """True when ``text`` is hex (dashes aside) but shorter than a whole id."""
    digits = text.replace("-", "").lower()
    return bool(_HEX_RE.match(digits)) and len(digits) < 32 and not UUID7_RE.match(text)


def resolve(text: str, pools: Iterable[Collection[str]]) -> str:
    """The id that ``text`` names among the ids in ``pools``: ``text`` itself
    when it is a whole id or held as it is (no scan), the one id it is a
    prefix of, or ``text`` when it names none (the caller answers NOT_FOUND).
    Case and dashes do not matter. INVALID_ARGUMENT when it is a prefix
    shorter than :data:`MIN_PREFIX` hex digits, or one of several ids."""
    if UUID7_RE.match(text) or any(text in pool for pool in pools):
        return text
    digits = text.replace("-", "").lower()
    if not _HEX_RE.match(digits):
        return text  # not hex: the prefix of no id
    if len(digits) < MIN_PREFIX:
        raise InvalidArgument(f"execution id prefix {text!r} is too short: "
                              f"give at least {MIN_PREFIX} hex digits")
    # ids are canonical, so put the dashes where they are and compare strings
    canon = "-".join(digits[a:b] for a, b in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))
                     if digits[a:b])
    found = {eid for pool in pools for eid in pool if eid.startswith(canon)}
    if len(found) > 1:
        raise InvalidArgument(f"execution id prefix {text!r} matches {len(found)} executions: "
                              "give more characters")
    return found.pop() if found else text
