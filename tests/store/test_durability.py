"""Storage faults at the store level: GuardedStore, open_db, check and repair.

The SMS-level behaviour (read-only mode, recovery, restarts) is tested with
real daemons in tests/integration/test_durability.py; these pin each piece
on its own, on real LevelDB files and, for a full disk, a real tmpfs.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spear import errors
from spear.store import repair as R
from spear.store.guarded import PROBE_KEY, GuardedStore
from spear.store.leveldb import LevelDBStore, open_db
from spear.store.memory import MemoryStore


@pytest.fixture(autouse=True)
def private_umask():
    # what the daemons use (spear.fsmodes.daemon_umask): no SECURITY warnings
    old = os.umask(0o077)
    yield
    os.umask(old)


class Flaky(MemoryStore):
    """A memory store whose writes fail while ``broken`` (and that counts reopens)."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False
        self.reopens = 0
        self.writes = 0

    def _check(self) -> None:
        self.writes += 1
        if self.broken:
            raise OSError(28, "No space left on device")

    def put(self, key, value, *, sync=False):
        self._check()
        super().put(key, value, sync=sync)

    def delete(self, key, *, sync=False):
        self._check()
        super().delete(key, sync=sync)

    def write_batch(self, puts=(), deletes=(), *, sync=False):
        self._check()
        super().write_batch(puts, deletes, sync=sync)

    def reopen(self):
        self.reopens += 1


# ---------------------------------------------------------------- GuardedStore


def test_a_failed_write_turns_the_store_read_only_until_a_probe_succeeds(caplog):
    inner = Flaky()
    g = GuardedStore(inner)
    g.put(b"ex/1", b"a", sync=True)
    assert g.healthy

    inner.broken = True
    with pytest.raises(errors.Unavailable, match="No space left on device") as e:
        g.write_batch([(b"ex/2", b"b")], sync=True)
    assert e.value.code == "UNAVAILABLE"
    assert not g.healthy and g.write_errors == 1
    assert "STORE WRITE FAILED" in caplog.text
    # every later write is refused at once, without touching the backend
    writes = inner.writes
    for op in (lambda: g.put(b"ex/3", b"c"), lambda: g.delete(b"ex/1"),
               lambda: g.write_batch([(b"ex/4", b"d")])):
        with pytest.raises(errors.Unavailable, match="storage is failing"):
            op()
    assert inner.writes == writes and g.write_errors == 1
    # reads are served meanwhile
    assert g.get(b"ex/1") == b"a" and [k for k, _ in g.scan(b"ex/")] == [b"ex/1"]

    assert g.probe() is False and not g.healthy  # still broken: still read-only
    inner.broken = False
    assert g.probe() is True and g.healthy and g.recoveries == 1
    assert inner.reopens == 2  # the backend is reopened before each probe write
    assert g.get(PROBE_KEY) is not None
    g.put(b"ex/5", b"e", sync=True)
    assert g.get(b"ex/2") is None  # refused means not written


def test_leveldb_messages_are_text_in_the_error():
    class Boom(MemoryStore):
        def put(self, key, value, *, sync=False):
            raise OSError(b"IO error: /x/000003.log: No space left on device")

    g = GuardedStore(Boom())
    with pytest.raises(errors.Unavailable) as e:
        g.put(b"k", b"v")
    assert "b'" not in e.value.message and "000003.log: No space left" in e.value.message


def test_leveldb_on_a_full_disk_refuses_writes_keeps_acknowledged_ones_and_recovers(
        tmp_path, small_tmpfs, fill_disk):
    disk = small_tmpfs(tmp_path / "disk", 8)
    g = GuardedStore(LevelDBStore(disk / "db"))
    acked = []
    try:
        for i in range(50):
            g.put(b"ex/%04d" % i, b"x" * 200, sync=True)
            acked.append(b"ex/%04d" % i)
        fill_disk(disk / "filler")
        refused = None
        for i in range(50, 5000):
            key = b"ex/%04d" % i
            try:
                g.write_batch([(key, b"x" * 200)], sync=True)
            except errors.Unavailable as exc:
                refused = key
                assert "No space left on device" in exc.message
                break
            acked.append(key)
        assert refused is not None, "4950 synced writes on a full disk and none failed"
        assert g.probe() is False  # reopening needs space too
        # the store is closed until it reopens: reads say so (UNAVAILABLE), they do not crash
        with pytest.raises(errors.Unavailable, match="closed until it can be reopened"):
            g.get(acked[0])
        with pytest.raises(errors.Unavailable, match="closed until it can be reopened"):
            list(g.scan(b"ex/"))

        os.unlink(disk / "filler")
        assert g.probe() is True
        keys = [k for k, _ in g.scan(b"ex/")]
        assert keys == acked  # every acknowledged write, nothing refused
        g.put(refused, b"again", sync=True)
    finally:
        g.close()
    s = LevelDBStore(disk / "db")  # and they are on disk
    try:
        assert [k for k, _ in s.scan(b"ex/")] == sorted([*acked, refused])
    finally:
        s.close()


# ---------------------------------------------------------------- never create over data


def _store_with_tables(path: Path, runs: int = 2, n: int = 500) -> list[list[bytes]]:
    """A LevelDB store whose records of each run are in a table file of their own."""
    keys = []
    for r in range(runs):
        s = LevelDBStore(path)  # opening turns the previous run's log into a table
        ks = [b"ex/%d-%05d" % (r, i) for i in range(n)]
        s.write_batch([(k, os.urandom(64)) for k in ks], sync=True)
        if r == 0:
            s.put(b"fn/f", b"spec", sync=True)
            ks.append(b"fn/f")
        s.close()
        keys.append(ks)
    LevelDBStore(path).close()
    return keys


def listing(path: Path) -> dict[str, int]:
    return {f.name: f.stat().st_size for f in path.iterdir()}


def test_a_store_without_current_is_refused_not_recreated(tmp_path):
    db = tmp_path / "db"
    _store_with_tables(db, runs=1)
    (db / "CURRENT").unlink()
    before = listing(db)
    for attempt in (lambda: LevelDBStore(db), lambda: open_db(db, create=True)):
        with pytest.raises(errors.StoreError) as e:
            attempt()
        assert "CURRENT is missing" in e.value.message
        assert f"spear store repair {db}" in e.value.message
        assert e.value.code == "UNAVAILABLE"
    assert listing(db) == before

    rep = R.check(db)
    assert not rep.ok and "CURRENT is missing" in rep.problems[0]
    assert listing(db) == before  # checking changes nothing either

    rep = R.repair(db)
    assert rep.ok and rep.records == {"ex": 500, "fn": 1} and rep.dropped == []
    assert listing(Path(rep.backup)) == before
    assert R.check(db).ok


def test_an_empty_directory_gets_a_new_store(tmp_path):
    (tmp_path / "db").mkdir()
    s = LevelDBStore(tmp_path / "db")
    s.put(b"k", b"v", sync=True)
    s.close()
    assert (tmp_path / "db" / "CURRENT").exists()
    with pytest.raises(errors.StoreError, match="no LevelDB store there"):
        open_db(tmp_path / "nothing", create=False)


def test_a_truncated_table_is_named_on_read_and_repair_reports_what_it_dropped(tmp_path):
    db = tmp_path / "db"
    first, second = _store_with_tables(db)
    tables = sorted(glob.glob(str(db / "*.ldb")))
    assert len(tables) == 2, os.listdir(db)
    victim = Path(tables[-1])  # the second run's records
    truncated = victim.stat().st_size // 2
    os.truncate(victim, truncated)

    s = LevelDBStore(db)  # LevelDB opens it: the damage shows on the first read
    try:
        with pytest.raises(errors.StoreError) as e:
            list(s.scan(b"ex/"))
        assert victim.name in e.value.message and "spear store repair" in e.value.message
    finally:
        s.close()

    rep = R.check(db)
    assert not rep.ok and victim.name in rep.problems[0]

    rep = R.repair(db)
    assert rep.ok, rep.lines()
    assert rep.dropped == [f"lost/{victim.name}"]
    assert rep.records == {"ex": 500, "fn": 1}  # the first run's records, all of them
    assert any(f"dropped: lost/{victim.name}" in line for line in rep.lines())
    # the damaged table is kept as it was, in the backup and in lost/
    assert (Path(rep.backup) / victim.name).stat().st_size == truncated
    assert (db / "lost" / victim.name).stat().st_size == truncated
    s = LevelDBStore(db)
    try:
        assert [k for k, _ in s.scan()] == sorted(first)
    finally:
        s.close()


def test_repair_twice_in_one_second_keeps_both_backups_and_files_stay_private(
        tmp_path, monkeypatch):
    db = tmp_path / "db"
    _store_with_tables(db, runs=1)
    monkeypatch.setattr(R.time, "strftime", lambda fmt: "20260101-000000")
    os.umask(0o022)  # as an operator's shell would have it
    a, b = R.repair(db), R.repair(db)
    assert a.backup != b.backup and Path(a.backup).is_dir() and Path(b.backup).is_dir()
    for root, dirs, files in os.walk(db):
        for name in dirs + files:
            mode = os.stat(os.path.join(root, name)).st_mode & 0o777
            assert mode & 0o077 == 0, (name, oct(mode))


def test_a_store_in_use_is_not_repaired_under_its_owner(tmp_path):
    db = tmp_path / "db"
    _store_with_tables(db, runs=1)
    owner = subprocess.Popen(
        [sys.executable, "-c", "import sys; from spear.store.leveldb import LevelDBStore; "
         f"s = LevelDBStore({str(db)!r}); print('open', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "open"
        with pytest.raises(errors.StoreError, match="in use by another process") as e:
            R.repair(db)
        assert "stop the SMS" in e.value.message
        assert not list(tmp_path.glob("db.backup-*"))  # refused before anything was copied
        rep = R.check(db)
        assert not rep.ok and "in use by another process" in rep.problems[0]
    finally:
        owner.stdin.close()
        owner.wait(10)
    assert R.repair(db).ok  # stopped: now it may
