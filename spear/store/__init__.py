"""Key-value stores behind one small interface: memory, leveldb, rocksdb.

:mod:`.base` declares the interface (:class:`Store`); each backend lives in
its own module and is imported only when :func:`open_store` names it, so an
optional dependency (rocksdb) costs nothing until it is asked for.
:mod:`.guarded` wraps any store with the fail-stop rule after a write error;
:mod:`.repair` checks and repairs a LevelDB directory. This package may import
only :mod:`spear.errors`, :mod:`spear.config` and :mod:`spear.fsmodes`; the
services import it, never the other way round.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from .base import Store

__all__ = ["Store", "open_store"]

#: where a persistent store lives when no path is given
DEFAULT_PATH = "./.spear/sms"


def open_store(backend: str, path: str | None = None) -> Store:
    """Open a store by backend name (``memory``, ``leveldb``, ``rocksdb``).

    Backends are imported here, lazily; a backend whose optional dependency
    is missing raises :class:`spear.errors.Unavailable` naming the extra to install.
    """
    if backend == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if backend == "leveldb":
        from .leveldb import LevelDBStore

        return LevelDBStore(path or DEFAULT_PATH)
    if backend == "rocksdb":
        from .rocksdb import RocksDBStore

        return RocksDBStore(path or DEFAULT_PATH)
    raise InvalidArgument(f"unknown store backend {backend!r} (memory, leveldb, rocksdb)")
