"""RocksDB store (rocksdict), an optional extra: ``pip install 'spear[rocksdb]'``."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from ..errors import Unavailable
from ..fsmodes import private_dir
from .base import Store


class RocksDBStore(Store):
    """A RocksDB database in one directory."""

    def __init__(self, path: str | Path) -> None:
        try:
            import rocksdict
        except ImportError:
            raise Unavailable("the rocksdb store needs the optional extra: pip install 'spear[rocksdb]'") from None
        private_dir(path, what="store")  # 0700, and what an older run left readable is fixed
        self._rd = rocksdict
        self._db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
        self._sync = rocksdict.WriteOptions()
        self._sync.sync = True
        self._closed = False

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def put(self, key: bytes, value: bytes, *, sync: bool = False) -> None:
        self._db.put(key, value, self._sync if sync else None)

    def delete(self, key: bytes, *, sync: bool = False) -> None:
        self._db.delete(key, self._sync if sync else None)

    def write_batch(self, puts: Iterable[tuple[bytes, bytes]] = (), deletes: Iterable[bytes] = (), *, sync: bool = False) -> None:
        wb = self._rd.WriteBatch(raw_mode=True)
        for k, v in puts:
            wb.put(k, v)
        for k in deletes:
            wb.delete(k)
        self._db.write(wb, self._sync if sync else None)

    def scan(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            k = it.key()
            if not k.startswith(prefix):
                break
            yield k, it.value()
            it.next()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._db.close()
