"""In-memory store for tests and development (lost at exit)."""

from __future__ import annotations

import bisect
from typing import Iterable, Iterator

from .base import Store


class MemoryStore(Store):
    """A sorted dict in memory."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def put(self, key: bytes, value: bytes, *, sync: bool = False) -> None:
        if key not in self._data:
            bisect.insort(self._keys, key)
        self._data[key] = bytes(value)

    def delete(self, key: bytes, *, sync: bool = False) -> None:
        if self._data.pop(key, None) is not None:
            i = bisect.bisect_left(self._keys, key)
            del self._keys[i]

    def write_batch(self, puts: Iterable[tuple[bytes, bytes]] = (), deletes: Iterable[bytes] = (), *, sync: bool = False) -> None:
        # materialise first so a failing iterator leaves the store untouched
        puts = [(bytes(k), bytes(v)) for k, v in puts]
        deletes = [bytes(k) for k in deletes]
        for k, v in puts:
            self.put(k, v)
        for k in deletes:
            self.delete(k)

    def scan(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        # iterate over a snapshot, like LevelDB does
        i = bisect.bisect_left(self._keys, prefix)
        j = i
        keys = self._keys
        while j < len(keys) and keys[j].startswith(prefix):
            j += 1
        for k in keys[i:j]:
            v = self._data.get(k)
            if v is not None:
                yield k, v
