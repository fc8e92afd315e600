"""Checking and repairing a LevelDB store (``spear store check|repair``).

``check`` opens the store read-only in spirit (nothing is written but what
LevelDB itself needs to open), walks every record with checksums verified,
and counts records by kind. ``repair`` first copies the whole directory to
``PATH.backup-YYYYmmdd-HHMMSS`` (unless told not to), then runs LevelDB's
own repair (``plyvel.repair_db``: it rebuilds the manifest and ``CURRENT``
from the table and log files, dropping what cannot be read), then checks
again. Run both with the SMS stopped: LevelDB allows one process per store,
so ``check`` reports a store in use, and ``repair`` refuses one (LevelDB's
repairer itself would rewrite the files under their owner).
"""

from __future__ import annotations

import collections
import fcntl
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import errors


@dataclass
class Report:
    """What a check found."""

    path: str
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    records: dict[str, int] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0
    backup: str = ""
    #: table files the repair could not read and set aside in ``lost/``: their
    #: records are gone from the store (they are still in the backup)
    dropped: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"store {self.path}: {'OK' if self.ok else 'DAMAGED'} "
               f"({self.files} files, {self.bytes} bytes)"]
        for kind, n in sorted(self.records.items()):
            out.append(f"  {n:>9} {kind} records")
        out.extend(f"  problem: {p}" for p in self.problems)
        out.extend(f"  dropped: {d} was unreadable; its records are not in the store any more "
                   f"(LevelDB's repairer moved it to lost/)" for d in self.dropped)
        if self.backup:
            out.append(f"  backup of the damaged store: {self.backup}")
        return out


def _kind(key: bytes) -> str:
    head, sep, _ = key.partition(b"/")
    return head.decode("utf-8", "replace") if sep else "other"


def check(path: str | os.PathLike) -> Report:
    """Open the store without creating anything and read every record."""
    import plyvel

    from .leveldb import _has_store_files, _msg, open_db

    p = Path(path)
    rep = Report(path=str(p))
    if not p.is_dir():
        rep.ok = False
        rep.problems.append("no such directory")
        return rep
    for f in p.iterdir():
        if f.is_file():
            rep.files += 1
            rep.bytes += f.stat().st_size
    if not _has_store_files(p):
        rep.ok = False
        rep.problems.append("no LevelDB files here")
        return rep
    umask = os.umask(0o077)  # what LevelDB writes to open it is the store's: private
    try:
        db = open_db(p, create=False)
    except errors.StoreError as exc:
        rep.ok = False
        rep.problems.append(exc.message.split(" To recover:")[0].split(". If files")[0])
        return rep
    finally:
        os.umask(umask)
    counts: collections.Counter = collections.Counter()
    try:
        with db.iterator(verify_checksums=True, fill_cache=False) as it:
            for key, _ in it:
                counts[_kind(key)] += 1
    except (plyvel.CorruptionError, plyvel.IOError) as exc:
        rep.ok = False
        rep.problems.append(f"unreadable records after {sum(counts.values())}: {_msg(exc)}")
    finally:
        db.close()
    rep.records = dict(counts)
    return rep


def repair(path: str | os.PathLike, *, backup: bool = True) -> Report:
    """Back up, repair with LevelDB's repairer, and check the result.

    Refused (StoreError, nothing copied or changed) while another process
    holds the store.
    """
    p = Path(path)
    if not p.is_dir():
        raise errors.NotFound(f"store {p}: no such directory")
    held = _lock(p)  # LevelDB's repairer takes no lock of its own
    try:
        return _repair(p, backup)
    finally:
        if held is not None:
            os.close(held)


def _lock(p: Path) -> int | None:
    """Take the store's LOCK the way LevelDB does (fcntl), or refuse: a store in
    use must not be repaired under its owner's feet."""
    if not (p / "LOCK").exists():
        return None
    fd = os.open(p / "LOCK", os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise errors.StoreError(f"store {p} is in use by another process (it holds {p / 'LOCK'}); "
                                f"stop the SMS before repairing its store") from None
    return fd


def _repair(p: Path, backup: bool) -> Report:
    import plyvel

    copy = ""
    if backup:
        copy = f"{p}.backup-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while os.path.lexists(copy):  # a second repair within the same second
            n += 1
            copy = f"{p}.backup-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
        shutil.copytree(p, copy, symlinks=True)
        os.chmod(copy, 0o700)
    lost = p / "lost"
    before = set(os.listdir(lost)) if lost.is_dir() else set()
    umask = os.umask(0o077)  # what the repairer writes is the store's: private
    try:
        plyvel.repair_db(str(p), paranoid_checks=False)
    except (plyvel.Error, OSError) as exc:
        raise errors.StoreError(f"store {p}: repair failed: {exc}"
                                + (f"; the original is kept in {copy}" if copy else "")) from None
    finally:
        os.umask(umask)
    rep = check(p)
    rep.backup = copy
    # the repairer also files old manifests and converted logs in lost/;
    # a table file there is one it could not read
    after = set(os.listdir(lost)) if lost.is_dir() else set()
    rep.dropped = sorted(f"lost/{n}" for n in after - before if n.endswith((".ldb", ".sst")))
    return rep
