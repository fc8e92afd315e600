"""A store wrapper that turns write failures into a visible, recoverable state.

Every write of the SMS goes through :class:`GuardedStore`. When one fails
(disk full, I/O error, a LevelDB background error) the store is *suspect*:

* the failing write raises :class:`spear.errors.Unavailable` naming the
  cause, so the caller does not acknowledge anything it could not persist;
* every later write is refused the same way at once (the SMS turns
  read-only: new work is refused, reads keep working);
* :meth:`probe` (called by the daemon's tick) reopens the backend — LevelDB
  keeps a write error until it is reopened — and writes a probe record with
  ``sync=True``; when that succeeds the store is healthy again and callers
  flush what they kept in memory meanwhile.

Reads never change the state: a read error propagates as it is.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable, Iterator

from .. import errors
from .base import Store

log = logging.getLogger("spear.store")

PROBE_KEY = b"meta/store_probe"


def _describe(exc: Exception) -> str:
    """``Type: message`` (LevelDB's messages come as bytes), at most 300 characters."""
    arg = exc.args[0] if len(exc.args) == 1 else str(exc)
    text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
    return f"{type(exc).__name__}: {text}"[:300]


class GuardedStore(Store):
    """Wraps a backend; ``error`` is "" while writes succeed, else why they don't."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.error = ""
        self.failed_at = 0.0
        self.write_errors = 0
        self.recoveries = 0

    @property
    def healthy(self) -> bool:
        return not self.error

    # ------------------------------------------------------------- writes

    def _refuse(self) -> errors.Unavailable:
        return errors.Unavailable(f"SMS storage is failing ({self.error}); nothing new is "
                                  "accepted until writes succeed again")

    def _write(self, fn, *args, **kw) -> None:
        if self.error:
            raise self._refuse()
        try:
            fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - any backend failure makes it suspect
            self.write_errors += 1
            self.error = _describe(exc)
            self.failed_at = time.time()
            log.error("STORE WRITE FAILED: %s; the SMS is read-only until writes succeed "
                      "again (free space or fix the disk: it recovers by itself)", self.error)
            raise self._refuse() from None

    def put(self, key: bytes, value: bytes, *, sync: bool = False) -> None:
        self._write(self.inner.put, key, value, sync=sync)

    def delete(self, key: bytes, *, sync: bool = False) -> None:
        self._write(self.inner.delete, key, sync=sync)

    def write_batch(self, puts: Iterable[tuple[bytes, bytes]] = (), deletes: Iterable[bytes] = (),
                    *, sync: bool = False) -> None:
        self._write(self.inner.write_batch, list(puts), list(deletes), sync=sync)

    # ------------------------------------------------------------- reads

    def get(self, key: bytes) -> bytes | None:
        return self.inner.get(key)

    def scan(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        return self.inner.scan(prefix)

    def close(self) -> None:
        self.inner.close()

    def reopen(self) -> None:
        self.inner.reopen()

    # ------------------------------------------------------------- recovery

    def probe(self) -> bool:
        """Try to leave the failed state: reopen, then one synced write. True if healthy."""
        if not self.error:
            return True
        try:
            self.inner.reopen()
            self.inner.put(PROBE_KEY, str(time.time()).encode(), sync=True)
        except Exception as exc:  # noqa: BLE001 - still failing
            log.debug("store probe failed: %s", exc)
            return False
        log.warning("store writes succeed again after %.1fs; the SMS accepts new work",
                    time.time() - self.failed_at)
        self.error = ""
        self.recoveries += 1
        return True
