"""The key-value interface every store backend provides.

Keys and values are bytes. Keys are namespaced by a prefix such as
``b"node/"``. ``write_batch`` applies puts and deletes atomically and, with
``sync=True``, is on disk before it returns (the SMS confirms a durable
write only after that).
"""

from __future__ import annotations

import abc
from typing import Iterable, Iterator


class Store(abc.ABC):
    """A small ordered key-value store."""

    @abc.abstractmethod
    def get(self, key: bytes) -> bytes | None:
        """The value under ``key`` or None."""

    @abc.abstractmethod
    def put(self, key: bytes, value: bytes, *, sync: bool = False) -> None:
        """Set one key."""

    @abc.abstractmethod
    def delete(self, key: bytes, *, sync: bool = False) -> None:
        """Remove one key (no error if absent)."""

    @abc.abstractmethod
    def write_batch(
        self,
        puts: Iterable[tuple[bytes, bytes]] = (),
        deletes: Iterable[bytes] = (),
        *,
        sync: bool = False,
    ) -> None:
        """Apply many puts and deletes atomically."""

    @abc.abstractmethod
    def scan(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """All (key, value) pairs whose key starts with ``prefix``, in key order."""

    def close(self) -> None:
        """Release the store; further calls are errors."""

    def reopen(self) -> None:
        """Close and open again (after a write error some backends stay failed
        until reopened). Never creates a store that is not there."""

