"""LevelDB store (plyvel): the default for daemons."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from ..errors import Unavailable
from ..fsmodes import private_dir
from .base import Store


class LevelDBStore(Store):
    """A LevelDB database in one directory; one process owns it at a time."""

    def __init__(self, path: str | Path) -> None:
        try:
            import plyvel
        except ImportError as exc:  # pragma: no cover - plyvel is a dependency
            raise Unavailable(f"leveldb store needs plyvel: {exc}") from None
        private_dir(path, what="store")  # 0700, and what an older run left readable is fixed
        try:
            # a 16 MiB memtable (default 4 MiB): a quarter of the level-0 flushes and
            # compactions under a steady stream of execution records
            self._db = plyvel.DB(str(path), create_if_missing=True, write_buffer_size=16 << 20)
        except plyvel.IOError as exc:
            raise Unavailable(f"cannot open LevelDB at {path}: {exc}") from None
        self.path = str(path)

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def put(self, key: bytes, value: bytes, *, sync: bool = False) -> None:
        self._db.put(key, value, sync=sync)

    def delete(self, key: bytes, *, sync: bool = False) -> None:
        self._db.delete(key, sync=sync)

    def write_batch(self, puts: Iterable[tuple[bytes, bytes]] = (), deletes: Iterable[bytes] = (), *, sync: bool = False) -> None:
        with self._db.write_batch(sync=sync, transaction=True) as wb:
            for k, v in puts:
                wb.put(k, v)
            for k in deletes:
                wb.delete(k)

    def scan(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        it = self._db.iterator(prefix=prefix) if prefix else self._db.iterator()
        with it:
            yield from it

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()
