"""LevelDB store (plyvel): the default for daemons."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import StoreError, Unavailable
from ..fsmodes import private_dir
from .base import Store

#: how to get out of a store that does not open (docs/operations.md)
REPAIR_HINT = ("stop the SMS, then run `spear store check {path}` to see what is wrong and "
               "`spear store repair {path}` (it copies the directory to a backup first); "
               "see docs/operations.md, \"Storage faults\"")


def _has_store_files(path: Path) -> bool:
    """Whether ``path`` holds anything LevelDB writes (a store, or what is left of one)."""
    try:
        names = [n for n in os.listdir(path) if not n.startswith(".")]
    except FileNotFoundError:
        return False
    return any(n == "CURRENT" or n == "LOCK" or n.startswith("MANIFEST-") or n == "LOG"
               or n.endswith((".ldb", ".log", ".sst")) for n in names)


def open_db(path: str | Path, *, create: bool):
    """Open LevelDB at ``path``; never create one where one was (or parts of one are).

    ``create``: make a new store if the directory holds none at all.
    """
    import plyvel

    path = Path(path)
    existing = _has_store_files(path)
    if existing and not (path / "CURRENT").exists():
        raise StoreError(f"store {path}: the file CURRENT is missing, so LevelDB cannot find "
                         f"its manifest; refusing to start with an empty store over the data "
                         f"that is there. To recover: " + REPAIR_HINT.format(path=path))
    if not existing and not create:
        raise StoreError(f"store {path}: no LevelDB store there")
    try:
        # a 16 MiB memtable (default 4 MiB): a quarter of the level-0 flushes and
        # compactions under a steady stream of execution records
        return plyvel.DB(str(path), create_if_missing=not existing, error_if_exists=False,
                         paranoid_checks=True, write_buffer_size=16 << 20)
    except plyvel.CorruptionError as exc:
        raise StoreError(f"store {path} is corrupt: {_msg(exc)}. To recover: "
                         + REPAIR_HINT.format(path=path)) from None
    except plyvel.IOError as exc:
        text = _msg(exc)
        if "lock" in text.lower():
            raise StoreError(f"store {path} is in use by another process ({text}); one SMS "
                             f"per store") from None
        raise StoreError(f"cannot open the store {path}: {text}. If files are missing or "
                         f"damaged: " + REPAIR_HINT.format(path=path)) from None


def _msg(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else str(exc)
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


class LevelDBStore(Store):
    """A LevelDB database in one directory; one process owns it at a time."""

    def __init__(self, path: str | Path) -> None:
        try:
            import plyvel
        except ImportError as exc:  # pragma: no cover - plyvel is a dependency
            raise Unavailable(f"leveldb store needs plyvel: {exc}") from None
        private_dir(path, what="store")  # 0700, and what an older run left readable is fixed
        self._db = open_db(path, create=True)
        self.path = str(path)
        self._closed_why = ""

    def reopen(self) -> None:
        """After a write error LevelDB refuses every write until reopened.

        If opening fails (the disk is still full: opening writes), the store
        stays closed and every call raises :class:`StoreError` (UNAVAILABLE)
        until a later reopen succeeds.
        """
        if not self._db.closed:
            self._db.close()
        try:
            self._db = open_db(self.path, create=False)
            self._closed_why = ""
        except StoreError as exc:
            self._closed_why = exc.message
            raise

    @property
    def db(self):
        """The open database, or StoreError while a reopen has not succeeded."""
        if self._db.closed:
            raise StoreError(f"store {self.path} is closed until it can be reopened "
                             f"({self._closed_why or 'closed'})")
        return self._db

    def _unreadable(self, exc: Exception) -> StoreError:
        return StoreError(f"store {self.path}: a read failed: {_msg(exc)}. To recover: "
                          + REPAIR_HINT.format(path=self.path))

    def get(self, key: bytes) -> bytes | None:
        import plyvel

        try:
            return self.db.get(key)
        except (plyvel.CorruptionError, plyvel.IOError) as exc:
            raise self._unreadable(exc) from None

    def put(self, key: bytes, value: bytes, *, sync: bool = False) -> None:
        self.db.put(key, value, sync=sync)

    def delete(self, key: bytes, *, sync: bool = False) -> None:
        self.db.delete(key, sync=sync)

    def write_batch(self, puts: Iterable[tuple[bytes, bytes]] = (), deletes: Iterable[bytes] = (), *, sync: bool = False) -> None:
        with self.db.write_batch(sync=sync, transaction=True) as wb:
            for k, v in puts:
                wb.put(k, v)
            for k in deletes:
                wb.delete(k)

    def scan(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        import plyvel

        try:
            # creating the iterator already reads (its first seek): inside the try
            it = self.db.iterator(prefix=prefix) if prefix else self.db.iterator()
            with it:
                yield from it
        except (plyvel.CorruptionError, plyvel.IOError) as exc:
            raise self._unreadable(exc) from None

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()
