"""One behaviour suite for every store backend (memory, leveldb, rocksdb)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from spear import errors
from spear.store import Store, open_store

HAVE_ROCKSDB = importlib.util.find_spec("rocksdict") is not None
BACKENDS = [
    "memory",
    "leveldb",
    pytest.param("rocksdb", marks=pytest.mark.skipif(not HAVE_ROCKSDB, reason="optional extra")),
]
PERSISTENT = [b for b in BACKENDS if b != "memory"]


# The shared ``store`` fixture covers memory and leveldb; this suite also
# covers rocksdb when the optional extra is installed.
@pytest.fixture(params=BACKENDS)
def store_backend(request) -> str:
    return request.param


def test_open_store_returns_a_store(store):
    assert isinstance(store, Store)


def test_get_put_delete(store):
    assert store.get(b"k") is None
    store.put(b"k", b"v1")
    assert store.get(b"k") == b"v1"
    store.put(b"k", b"v2")
    assert store.get(b"k") == b"v2"
    store.delete(b"k")
    assert store.get(b"k") is None
    store.delete(b"k")  # absent: no error
    store.delete(b"never-there")
    assert list(store.scan()) == []


def test_scan_by_prefix_in_key_order(store):
    for k in [b"node/c", b"node/a", b"fn/x", b"node/b", b"zzz", b"a"]:
        store.put(k, k.upper())
    assert list(store.scan(b"node/")) == [
        (b"node/a", b"NODE/A"), (b"node/b", b"NODE/B"), (b"node/c", b"NODE/C")]
    assert [k for k, _ in store.scan()] == [b"a", b"fn/x", b"node/a", b"node/b", b"node/c", b"zzz"]
    assert list(store.scan(b"nope/")) == []


def test_prefix_boundaries(store):
    # b"node0" sorts right after b"node/" (0x30 > 0x2f) and must not leak in
    keys = [b"node", b"node/", b"node/a", b"node/\xff", b"node0", b"node0/a", b"nod", b"nodf"]
    for k in keys:
        store.put(k, b"v")
    assert [k for k, _ in store.scan(b"node/")] == [b"node/", b"node/a", b"node/\xff"]
    assert [k for k, _ in store.scan(b"node0")] == [b"node0", b"node0/a"]
    assert [k for k, _ in store.scan(b"node")] == [
        b"node", b"node/", b"node/a", b"node/\xff", b"node0", b"node0/a"]


def test_prefix_of_ff_bytes(store):
    # a prefix that cannot be "incremented" must still end the scan correctly
    store.put(b"\xff", b"1")
    store.put(b"\xff\xff", b"2")
    store.put(b"\xff\xff\x00", b"3")
    store.put(b"\xfe", b"0")
    assert list(store.scan(b"\xff\xff")) == [(b"\xff\xff", b"2"), (b"\xff\xff\x00", b"3")]
    assert [k for k, _ in store.scan(b"\xff")] == [b"\xff", b"\xff\xff", b"\xff\xff\x00"]


def test_write_batch_applies_puts_and_deletes(store):
    store.put(b"old/1", b"x")
    store.put(b"old/2", b"y")
    store.write_batch(
        puts=[(b"new/1", b"a"), (b"new/2", b"b")],
        deletes=[b"old/1", b"missing"],
    )
    assert dict(store.scan()) == {b"new/1": b"a", b"new/2": b"b", b"old/2": b"y"}


def test_write_batch_accepts_iterators_and_empty(store):
    store.write_batch()
    store.write_batch(puts=iter([(b"a", b"1")]), deletes=iter([]))
    assert dict(store.scan()) == {b"a": b"1"}


def test_write_batch_put_then_delete_of_same_key(store):
    # puts are applied before deletes within one batch
    store.write_batch(puts=[(b"k", b"v")], deletes=[b"k"])
    assert store.get(b"k") is None


def test_write_batch_is_all_or_nothing(store, store_backend, request):
    store.put(b"keep", b"1")

    def puts():
        yield (b"a", b"1")
        raise RuntimeError("producer failed half way")

    with pytest.raises(RuntimeError):
        store.write_batch(puts(), [b"keep"])
    assert store.get(b"a") is None
    assert store.get(b"keep") == b"1"


def test_sync_writes(store):
    store.put(b"a", b"1", sync=True)
    store.put(b"b", b"2", sync=True)
    store.delete(b"a", sync=True)
    store.write_batch([(b"c", b"3")], [b"b"], sync=True)
    assert dict(store.scan()) == {b"c": b"3"}


def test_binary_keys_and_values(store):
    pairs = {
        b"\x00": b"",
        b"\x00\x00": b"\x00",
        b"bin/\x00\xff\x80": bytes(range(256)),
        b"bin/\xff\xfe": b"\xff" * 10_000,
        "bin/ü".encode(): "välue".encode(),
    }
    for k, v in pairs.items():
        store.put(k, v)
    for k, v in pairs.items():
        assert store.get(k) == v
    assert list(store.scan()) == sorted(pairs.items())
    assert [k for k, _ in store.scan(b"bin/")] == sorted(k for k in pairs if k.startswith(b"bin/"))


def test_empty_value_is_not_absent(store):
    store.put(b"k", b"")
    assert store.get(b"k") == b""
    assert list(store.scan(b"k")) == [(b"k", b"")]


def test_values_are_copied_on_put(store):
    buf = bytearray(b"abc")
    store.put(b"k", bytes(buf))
    buf[0] = ord("X")
    assert store.get(b"k") == b"abc"


def test_deleting_while_scanning_removes_every_key(store, store_backend, request):
    for i in range(6):
        store.put(b"k/%d" % i, b"v")
    for k, _ in store.scan(b"k/"):
        store.delete(k)
    assert list(store.scan(b"k/")) == []


def test_close_is_idempotent(store):
    store.put(b"k", b"v")
    store.close()
    store.close()


@pytest.mark.parametrize("backend", PERSISTENT)
def test_data_survives_close_and_reopen(backend, tmp_path):
    path = str(tmp_path / "db")
    s = open_store(backend, path)
    try:
        s.put(b"node/a", b"1", sync=True)
        s.write_batch([(b"node/b", b"2"), (b"node/c", b"3")], [b"node/a"], sync=True)
    finally:
        s.close()
    s = open_store(backend, path)
    try:
        assert list(s.scan(b"node/")) == [(b"node/b", b"2"), (b"node/c", b"3")]
    finally:
        s.close()


def test_leveldb_second_open_of_same_path_is_unavailable(tmp_path):
    path = str(tmp_path / "db")
    s = open_store("leveldb", path)
    try:
        with pytest.raises(errors.Unavailable, match="in use by another process"):
            open_store("leveldb", path)
    finally:
        s.close()


def test_memory_store_starts_empty_each_time():
    a = open_store("memory")
    a.put(b"k", b"v")
    b = open_store("memory")
    assert b.get(b"k") is None


def test_unknown_backend_is_invalid_argument():
    with pytest.raises(errors.InvalidArgument, match="unknown store backend 'nope'"):
        open_store("nope")


def test_rocksdb_without_extra_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rocksdict", None)  # as if the extra were not installed
    with pytest.raises(errors.Unavailable, match=r"pip install 'spear\[rocksdb\]'"):
        open_store("rocksdb", str(tmp_path / "db"))


def test_the_interface_does_not_import_its_backends():
    code = ("import sys, spear.store; "
            "print(sorted(m for m in sys.modules if m.startswith('spear.store.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['spear.store.base']"
