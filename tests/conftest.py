"""Fixtures shared by the whole suite.

Sections: network helpers, stores, zmq sockets, event loops. Add new shared
fixtures under the matching section (or a new one); anything used by only
one package belongs in that package's own conftest.py. Plain helper
functions (``wait_for``, ``spear_cli``, raw sockets...) live in tests/helpers.py.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest
import zmq
import zmq.asyncio

from spear.mesh import context
from spear.store import Store, open_store
from tests import helpers

# ---------------------------------------------------------------- network


@pytest.fixture
def free_port() -> Callable[[], int]:
    """``free_port()`` returns a currently unused TCP port on 127.0.0.1."""
    return helpers.free_port


# ---------------------------------------------------------------- stores

#: backends every store-using test runs against; rocksdb is an optional extra
STORE_BACKENDS = ("memory", "leveldb")


@pytest.fixture(params=STORE_BACKENDS)
def store_backend(request) -> str:
    """The name of a store backend (one test run per backend)."""
    return request.param


@pytest.fixture
def store(store_backend, tmp_path) -> Iterator[Store]:
    """An empty open store of each backend; leveldb lives under tmp_path."""
    s = open_store(store_backend, str(tmp_path / "db"))
    try:
        yield s
    finally:
        s.close()


# ---------------------------------------------------------------- file systems


@pytest.fixture
def small_tmpfs() -> Iterator[Callable[..., Path]]:
    """``small_tmpfs(path, mib=16)`` mounts a tmpfs of that size (mode 0700) on
    ``path`` (made if missing) and returns it: a disk that fills up for real.

    Needs root: elsewhere the test is skipped with the reason, except under
    ``CI=true``, where it fails. Every mount is unmounted at teardown (lazily if
    a process still holds it: stop the daemons first) and checked gone.
    """
    mounted: list[Path] = []

    def mount(path: Path, mib: int = 16) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        why = None
        if os.geteuid() != 0:
            why = "mounting a tmpfs (a disk that fills up) needs root"
        else:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700",
                                "spear-test", str(path)], capture_output=True, text=True)
            if r.returncode != 0:
                why = f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}"
        if why:
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI=true but {why}", pytrace=False)
            pytest.skip(why)
        mounted.append(path)
        return path

    try:
        yield mount
    finally:
        left = []
        for path in reversed(mounted):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], capture_output=True)
            if os.path.ismount(path):
                left.append(str(path))
        if left:
            pytest.fail(f"still mounted: {left}", pytrace=False)


def _fill(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    n = 0
    try:
        for size in (1 << 20, 1 << 16, 4096, 256, 1):
            chunk = b"\0" * size
            while True:
                try:
                    n += os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return n


@pytest.fixture
def fill_disk() -> Callable[[Path], int]:
    """``fill_disk(file)`` writes ``file`` until its file system is full (ENOSPC);
    returns the bytes written. Delete the file to free the space."""
    return _fill


# ---------------------------------------------------------------- zmq


@pytest.fixture
def zsocket() -> Iterator[Callable[..., zmq.Socket]]:
    """``zsocket(zmq.DEALER, aio=False)``: a raw socket on the process context.

    ``aio=True`` gives a :mod:`zmq.asyncio` socket (close it inside the event
    loop that used it). Every socket made is closed with linger=0 at teardown.
    """
    made: list[zmq.Socket] = []

    def make(kind: int, *, aio: bool = False) -> zmq.Socket:
        ctx = zmq.asyncio.Context.shadow(context().underlying) if aio else context()
        s = ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            if not s.closed:
                s.close(linger=0)


# ---------------------------------------------------------------- event loops


def _loop_factories():
    yield pytest.param(asyncio.new_event_loop, id="asyncio")
    try:
        import uvloop
    except ImportError:
        yield pytest.param(None, id="uvloop",
                           marks=pytest.mark.skip(reason="uvloop not installed"))
    else:
        yield pytest.param(uvloop.new_event_loop, id="uvloop")


@pytest.fixture(params=list(_loop_factories()))
def arun(request) -> Callable:
    """``arun(coro)`` runs a coroutine to completion on asyncio and on uvloop."""
    factory = request.param

    def run(coro):
        loop = factory()
        try:
            asyncio.set_event_loop(loop)
            return loop.run_until_complete(coro)
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()

    return run


# ---------------------------------------------------------------- code caches


@pytest.fixture(scope="session", autouse=True)
def _remove_node_code_caches(tmp_path_factory) -> Iterator[None]:
    """Remove, after the run, the default code caches of the test nodes.

    A node whose functions run as another user keeps its code bundles and
    Python environments under ``/var/cache/spear/<hash of its data dir>``
    (outside the private data directory), which outlives the test's
    temporary directories: each records its data directory, and the ones of
    this run's nodes (or of nodes whose data directory is gone) are removed.
    """
    yield
    from spear.runtimes.process.codecache import OWNER_FILE

    base = os.path.realpath(tmp_path_factory.getbasetemp())
    root = Path("/var/cache/spear")
    for marker in root.glob(f"*/{OWNER_FILE}") if root.is_dir() else ():
        owner = marker.read_text()
        if owner.startswith(base + os.sep) or not os.path.isdir(owner):
            shutil.rmtree(marker.parent, ignore_errors=True)
