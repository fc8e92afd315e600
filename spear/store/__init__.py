"""Key-value stores behind one small interface: memory, leveldb, rocksdb."""

from .base import Store, open_store

__all__ = ["Store", "open_store"]
