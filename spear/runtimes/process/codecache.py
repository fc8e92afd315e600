"""The code cache: each code bundle unpacked once per node, by SHA-256.

A Python handler deployed with a bundle (its ``artifact``, made by
:func:`spear.bundles.pack`) runs in ``<root>/<sha256>/``: the bundle
unpacked by :func:`spear.bundles.unpack` (which checks every entry), owned
by the node, directories 0755 and files 0644, so the sandbox user reads it
and writes nothing. Every function deployed with the same bundle shares the
directory; the last :meth:`CodeCache.release` of it removes it, and
:meth:`CodeCache.collect` removes what no prepared function uses (a
previous run's directories).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile

from ... import bundles, errors


def default_cache_dir(data_dir: str | os.PathLike, other_user: bool) -> str:
    """Where a node keeps its code and environments by default.

    When functions run as another user they must reach it, and the data
    directory is private: a root-owned directory of its own under
    ``/var/cache/spear``, named after the data directory. Else inside it.
    """
    if other_user:
        tag = hashlib.sha256(os.path.realpath(data_dir).encode()).hexdigest()[:12]
        return os.path.join("/var/cache/spear", tag)
    return os.path.join(os.fspath(data_dir), "cache")


#: in a default cache directory: the data directory of the node it belongs to, so
#: that a cache whose node is gone for good can be found and removed
OWNER_FILE = ".spear-data-dir"


def write_owner(root: str, data_dir: str) -> None:
    """Record in ``root`` which node data directory it belongs to (once)."""
    path = os.path.join(root, OWNER_FILE)
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(data_dir)


def make_dirs(path: str) -> None:
    """``os.makedirs(path)`` with every directory it makes 0755, whatever the umask."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    make_dirs(os.path.dirname(path))
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        return
    os.chmod(path, 0o755)


class CodeCache:
    """Unpacked bundles under ``root``, counted by the prepared functions that use them."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._users: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def path(self, digest: str) -> str:
        """The directory of the bundle of SHA-256 ``digest``."""
        return os.path.join(self.root, digest)

    async def acquire(self, name: str, artifact: bytes, digest: str = "") -> str:
        """The SHA-256 of ``artifact`` (checked against ``digest`` when given), unpacked
        in its directory if not yet, and counted as used until :meth:`release`."""
        got = await asyncio.to_thread(lambda: hashlib.sha256(artifact).hexdigest())
        if digest and digest != got:
            raise errors.InvalidArgument(f"{name}: the artifact's SHA-256 is {got}, not {digest}")
        self._users[got] = self._users.get(got, 0) + 1  # before unpacking: collect keeps it
        try:
            async with self._locks.setdefault(got, asyncio.Lock()):
                dest = self.path(got)
                if not os.path.isdir(dest):
                    make_dirs(self.root)
                    await asyncio.to_thread(bundles.unpack, artifact, dest)
        except errors.InvalidArgument as exc:
            self.release(got)
            raise errors.InvalidArgument(f"{name}: {exc.message}") from None
        except BaseException:
            self.release(got)
            raise
        return got

    def release(self, digest: str) -> None:
        """One prepared function no longer uses bundle ``digest``; the last one removes it."""
        left = self._users.get(digest, 0) - 1
        if left > 0:
            self._users[digest] = left
            return
        self._users.pop(digest, None)
        self._locks.pop(digest, None)
        self._remove(digest)

    def collect(self) -> list[str]:
        """Remove the unpacked bundles no prepared function uses."""
        try:
            names = os.listdir(self.root)
        except OSError:
            return []
        # a directory being unpacked (".unpack-*") is kept while an unpack runs
        busy = any(lock.locked() for lock in self._locks.values())
        gone = [n for n in names if n not in self._users and not (busy and n.startswith("."))]
        for name in gone:
            self._remove(name)
        return gone

    def _remove(self, name: str) -> None:
        path = self.path(name)
        if not os.path.lexists(path):
            return
        # renamed out of the way first: an unpack of the same bundle starts afresh
        try:
            trash = tempfile.mkdtemp(prefix=".gc-", dir=self.root)
            os.rename(path, os.path.join(trash, "x"))
        except OSError:
            trash = path
        shutil.rmtree(trash, ignore_errors=True)
