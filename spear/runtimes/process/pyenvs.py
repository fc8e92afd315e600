"""Python environments of handlers: one virtual environment per interpreter version
and requirement set, built once per node and shared.

A handler whose spec names ``requirements`` or ``python`` runs with the
interpreter of ``<root>/<key>/bin/python``, where ``key`` hashes the Python
version and the sorted requirement lines. The first prepare of a key builds
it (concurrent ones wait for that build: one lock per key); later ones, and
a restarted Spearlet, find it whole on disk.

Building never runs a tenant's code as root: only wheels are installed
(``uv pip install --no-build`` or ``pip install --only-binary=:all:``), and
the requirement lines were checked to be plain names and versions
(:func:`spear.specs.check_requirement`). The environment is built in a
temporary directory next to its final place and renamed there when complete,
so a killed build leaves no half environment (the ``.build-*`` directories
it leaves are removed when the next runtime starts). It is made with umask
022: readable by the sandbox user, writable only by the node.

When no prepared function uses an environment any longer, the time is noted
in its :data:`LAST_USE` file; :meth:`PyEnvs.collect` removes those unused for
longer than ``ttl``.

The environments together stay within ``max_bytes`` of disk (each one's size
is summed once, when it is sealed, and kept in its :data:`ABOUT` file): a
build that would pass it first removes unused environments, least recently
used first, and is refused RESOURCE_EXHAUSTED when what is in use leaves no
room, before it starts if the budget is already full, else once its size is
known (the new environment is then removed). A tenant deploying one
requirement set after another cannot fill the node's disk this way.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from typing import Awaitable, Callable

from ... import errors
from .codecache import make_dirs

log = logging.getLogger(__name__)

#: file in each environment whose mtime is when it was last used
LAST_USE = ".spear-last-use"
#: what a finished environment holds about itself
ABOUT = ".spear-env.json"
_BUILD = ".build-"
_UMASK = 0o022
#: what a failed build keeps of the installer's output, in the error
OUTPUT_TAIL = 2000
# installer output meaning the network, not the requirement, is at fault
_NETWORK = re.compile(
    r"(?i)(connection|network|timed? ?out|temporary failure|name resolution|dns|"
    r"unreachable|ssl|tls|proxy|failed to fetch|http status 5\d\d|server error)")
# installer output meaning a requirement cannot be had as asked
_UNRESOLVED = re.compile(r"(?i)(not found|no solution|no matching|could not find|unsatisfiable|"
                         r"no version|does not exist|no usable wheels|--no-build|only-binary)")
_COMPLAINT = re.compile(r"(?i)(error|because|cause|no matching|could not)")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def env_key(version: tuple[int, int], requirements: list[str]) -> str:
    """The name of the environment of ``version`` and ``requirements`` (order does not matter)."""
    text = json.dumps([f"{version[0]}.{version[1]}", sorted(r.strip() for r in requirements)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def find_uv() -> str | None:
    """The uv executable (the ``uv`` package's, else one on the system PATH), or None."""
    try:
        import uv  # noqa: PLC0415 - optional, looked up only when building
        return uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _disk_use(root: str) -> int:
    """The disk space everything under ``root`` takes, in bytes."""
    used = 0
    for top, _dirs, files in os.walk(root):
        for path in [top, *(os.path.join(top, f) for f in files)]:
            try:
                used += os.lstat(path).st_blocks * 512
            except OSError:
                pass
    return used


def _seal(root: str) -> int:
    """Make everything under ``root`` readable and not writable by others:
    directories 0755, files 0644 (0755 if executable). An installer may leave
    a world-writable file (uv's ``.lock``), the Spearlet's umask private ones.
    Returns the disk space it all takes, in bytes."""
    used = 0
    for top, dirs, files in os.walk(root):
        for path in [top, *(os.path.join(top, f) for f in files)]:
            st = os.lstat(path)
            used += st.st_blocks * 512
            if stat.S_ISLNK(st.st_mode):
                continue
            want = 0o755 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o100 else 0o644
            if stat.S_IMODE(st.st_mode) != want:
                os.chmod(path, want)
    return used


class PyEnvs:
    """The environments under ``root``, and the builds of new ones.

    ``installer``: ``"auto"`` (uv if found, else pip), ``"uv"`` or ``"pip"``.
    ``index_url``: the package index ("" = the installer's default).
    ``timeout``: seconds a build may take. ``ttl``: seconds an unused
    environment is kept. ``max_bytes``: the disk all environments may take
    together. ``min_free_bytes``: free disk a build never goes below (the
    node's store and logs share it). ``env``: the environment of the
    installer's process (the node's own: proxies, certificates). ``node``:
    named in errors.
    """

    def __init__(self, root: str, *, installer: str = "auto", index_url: str = "",
                 timeout: float = 600.0, ttl: float = 86400.0, max_bytes: int = 20 << 30,
                 env: dict[str, str] | None = None, node: str = "",
                 min_free_bytes: int = 1 << 30) -> None:
        if installer not in ("auto", "uv", "pip"):
            raise ValueError(f"installer must be 'auto', 'uv' or 'pip', not {installer!r}")
        self.root = root
        self.installer = installer
        self.index_url = index_url
        self.timeout = timeout
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        #: seconds between two measures of a running build (its size, the free disk)
        self.watch_every = 0.5
        self._sizes: dict[str, int] | None = None  # key -> bytes, read from disk once
        self._refused: dict[str, int] = {}  # key -> the size of its build the budget refused
        self._one_build = asyncio.Semaphore(1)
        self.env = dict(env if env is not None else {"PATH": "/usr/local/bin:/usr/bin:/bin"})
        self.node = node
        #: environments built by this runtime (tests count them)
        self.builds = 0
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}
        self._clean_builds()

    def _clean_builds(self) -> None:
        """Remove what builds killed with an earlier Spearlet left."""
        try:
            names = os.listdir(self.root)
        except OSError:
            return
        for name in names:
            if name.startswith(_BUILD):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    def python_of(self, key: str) -> str:
        """The interpreter of environment ``key``."""
        return os.path.join(self.root, key, "bin", "python")

    async def acquire(self, name: str, interpreter: str, version: tuple[int, int],
                      requirements: list[str]) -> str:
        """The key of the environment of ``requirements`` on ``interpreter``, built if
        need be, and counted as used until :meth:`release`."""
        key = env_key(version, requirements)
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with self._locks.setdefault(key, asyncio.Lock()):
                if not os.path.isdir(os.path.join(self.root, key)):
                    async with self._one_build:  # so the budget sees every other build done
                        await self._build_within_budget(name, key, interpreter, version,
                                                        requirements)
            self._touch(key)
        except BaseException:
            self.release(key)
            raise
        return key

    async def _build_within_budget(self, name: str, key: str, interpreter: str,
                                   version: tuple[int, int], requirements: list[str]) -> None:
        """Build ``key`` if the budget has room for it (its size, when an earlier build
        of it was refused, else any room at all), then keep it only if it fits."""
        if self._sizes is None:
            self._sizes = await asyncio.to_thread(self._read_sizes)
        self._make_room(name, key, self._refused.get(key, 0), before=True)
        await self._keep_free(name, key)
        self._check_free(name, 0)
        try:
            size = await self._build(name, key, interpreter, version, requirements)
        except errors.ResourceExhausted as exc:
            if exc.details.get("limit") == "envs_max_mb":  # stopped while it ran: at least this big
                self._refused[key] = max(self._refused.get(key, 0), exc.details["size"])
            raise
        self._sizes[key] = size
        try:
            self._make_room(name, key, size)
        except errors.ResourceExhausted:
            self._refused[key] = size  # the next deploy of it is refused without a build
            self._remove(key)
            raise
        self._refused.pop(key, None)

    def release(self, key: str) -> None:
        """One prepared function no longer uses environment ``key``."""
        left = self._users.get(key, 0) - 1
        if left > 0:
            self._users[key] = left
            return
        self._users.pop(key, None)
        self._touch(key)

    def _touch(self, key: str) -> None:
        path = os.path.join(self.root, key, LAST_USE)
        try:
            os.utime(path)
        except FileNotFoundError:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
                os.fchmod(fd, 0o644)  # whatever the Spearlet's umask
                os.close(fd)
            except OSError:
                pass
        except OSError:
            pass

    def collect(self, now: float | None = None) -> list[str]:
        """Remove the environments no prepared function uses, unused for over ``ttl``."""
        now = time.time() if now is None else now
        removed = []
        try:
            names = os.listdir(self.root)
        except OSError:
            return removed
        for key in names:
            if key in self._users:
                self._touch(key)  # in use now: its last use is now
                continue
            if key.startswith("."):
                continue
            lock = self._locks.get(key)
            if lock is not None and lock.locked():
                continue
            path = os.path.join(self.root, key)
            try:
                last = os.stat(os.path.join(path, LAST_USE)).st_mtime
            except OSError:
                last = 0.0
            if now - last > self.ttl:
                self._remove(key)
                removed.append(key)
                log.info("removed Python environment %s (unused for over %gs)", key, self.ttl)
        return removed

    def _remove(self, key: str, *, later: bool = True) -> str:
        """Remove environment ``key``: out of the way first (a prepare never finds half
        of it), then deleted by a thread (gigabytes of files must not stall the loop);
        with ``later=False`` the caller deletes the returned directory instead."""
        trash = tempfile.mkdtemp(prefix=_BUILD + "gc-", dir=self.root)
        try:
            os.rename(os.path.join(self.root, key), os.path.join(trash, key))
        except FileNotFoundError:
            pass  # gone already
        if later:
            threading.Thread(target=shutil.rmtree, args=(trash, True), daemon=True,
                             name="spear-env-rm").start()
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]  # a held one stays: its waiters and the next deploy share it
        if self._sizes is not None:
            self._sizes.pop(key, None)
        return trash

    # -- the disk budget
    def _read_sizes(self) -> dict[str, int]:
        """Each environment's size: from its :data:`ABOUT` file, else (built before
        sizes were kept) measured (run in a thread, once per start)."""
        sizes = {}
        try:
            names = os.listdir(self.root)
        except OSError:
            names = []
        for key in names:
            if key.startswith("."):
                continue
            try:
                with open(os.path.join(self.root, key, ABOUT)) as f:
                    sizes[key] = int(json.load(f)["bytes"])
            except (OSError, ValueError, TypeError, KeyError):
                sizes[key] = _disk_use(os.path.join(self.root, key))
        return sizes

    def _taken(self, key: str) -> bool:
        """Whether a prepared function uses environment ``key`` or a build holds it."""
        lock = self._locks.get(key)
        return key in self._users or (lock is not None and lock.locked())

    def _unused(self, key: str) -> list[str]:
        """Environments no prepared function uses and no build holds, but ``key``,
        least recently used first."""
        unused = []
        for other in self._sizes or {}:
            if other == key or self._taken(other):
                continue
            try:
                last = os.stat(os.path.join(self.root, other, LAST_USE)).st_mtime
            except OSError:
                last = 0.0
            unused.append((last, other))
        return [other for _, other in sorted(unused)]

    async def _keep_free(self, name: str, key: str) -> None:
        """Below the free-disk reserve, remove unused environments, least recently used
        first, each deleted before the disk is read again, until it is above it."""
        for other in self._unused(key):
            free = self._free()
            if free is None or free >= self.min_free_bytes:
                return
            if self._taken(other):  # by a prepare while the previous one was deleted
                continue
            trash = self._remove(other, later=False)
            await asyncio.to_thread(shutil.rmtree, trash, True)
            log.info("removed the unused Python environment %s to keep %d MB of disk free for "
                     "%s ([runtimes.process] envs_min_free_mb)", other, self.min_free_bytes >> 20, name)

    def _make_room(self, name: str, key: str, size: int, *, before: bool = False) -> None:
        """Keep all environments (``key``'s ``size`` included) within ``max_bytes``:
        remove unused ones, least recently used first, else RESOURCE_EXHAUSTED.
        ``before`` a build: a full budget has no room even for an unknown size."""
        sizes = self._sizes if self._sizes is not None else {}
        used = sum(sizes.values()) - sizes.get(key, 0) + size

        def full() -> bool:
            return used >= self.max_bytes if before and not size else used > self.max_bytes

        if not full():
            return
        for other in self._unused(key):
            if not full():
                break
            used -= sizes.get(other, 0)
            self._remove(other)
            log.info("removed the unused Python environment %s to make room for %s "
                     "([runtimes.process] envs_max_mb)", other, name)
        if full():
            mb = 1 << 20
            raise errors.ResourceExhausted(
                f"{name}: no room for its Python environment on node {self.node or '?'}: "
                + (f"it takes {size / mb:.1f} MB, and " if size else "")
                + f"the environments in use take {(used - size) / mb:.1f} MB of the "
                f"{self.max_bytes / mb:.0f} MB allowed ([runtimes.process] envs_max_mb)",
                details={"limit": "envs_max_mb", "used": used - size, "size": size,
                         "max": self.max_bytes})

    def _free(self) -> int | None:
        """Free bytes on the disk of the environments (None: unknown)."""
        where = self.root
        while not os.path.exists(where) and os.path.dirname(where) != where:
            where = os.path.dirname(where)  # the first build makes it: its disk all the same
        try:
            return shutil.disk_usage(where).free
        except OSError:
            return None

    def _check_free(self, name: str, building: int) -> None:
        """RESOURCE_EXHAUSTED if the disk under the environments has less than
        ``min_free_bytes`` free (``building``: bytes the running build holds)."""
        free = self._free()
        if free is None:
            return
        if free < self.min_free_bytes:
            mb = 1 << 20
            raise errors.ResourceExhausted(
                f"{name}: no room for its Python environment on node {self.node or '?'}: "
                f"{free / mb:.0f} MB of disk free, {self.min_free_bytes / mb:.0f} MB kept free "
                "([runtimes.process] envs_min_free_mb)"
                + (f"; the build was stopped at {building / mb:.1f} MB" if building else ""),
                details={"limit": "envs_min_free_mb", "free": free, "min_free": self.min_free_bytes,
                         "while_building": bool(building)})

    def _room(self, key: str) -> int:
        """The most environment ``key`` can take: the budget less what environments
        in use (or being built) hold; unused ones would be removed to make room."""
        held = sum(size for other, size in (self._sizes or {}).items()
                   if other != key and self._taken(other))
        return self.max_bytes - held

    async def _watch(self, name: str, key: str, build_dir: str) -> None:
        """Raise RESOURCE_EXHAUSTED if the running build in ``build_dir`` (the
        installer's downloads included) passed the room it could get, or left
        less free disk than the reserve. Measures in a thread, judges on the loop
        (which changes the sizes and users the room is made of)."""
        used = await asyncio.to_thread(_disk_use, build_dir)
        room = self._room(key)
        if used > room:
            mb = 1 << 20
            raise errors.ResourceExhausted(
                f"{name}: its Python environment was stopped while it was built on node "
                f"{self.node or '?'}: it took {used / mb:.1f} MB, more than the "
                f"{max(0, room) / mb:.1f} MB left of the {self.max_bytes / mb:.0f} MB allowed "
                "([runtimes.process] envs_max_mb)",
                details={"limit": "envs_max_mb", "size": used, "room": room, "max": self.max_bytes,
                         "while_building": True})
        self._check_free(name, used or 1)

    # -- building
    def _tool(self) -> str:
        if self.installer in ("auto", "uv"):
            uv = find_uv()
            if uv is not None:
                return uv
            if self.installer == "uv":
                raise errors.Unavailable(
                    f"installer is 'uv' ([runtimes.process] installer) but node {self.node or '?'} "
                    "has no uv (pip install uv)")
        return ""

    async def _build(self, name: str, key: str, interpreter: str, version: tuple[int, int],
                     requirements: list[str]) -> int:
        """Build environment ``key`` in a temporary directory, then rename it into place;
        returns its size in bytes."""
        make_dirs(self.root)  # 0755 whatever the umask: the sandbox user goes through
        tmp = tempfile.mkdtemp(prefix=f"{_BUILD}{key}-", dir=self.root)
        t0 = time.monotonic()
        uv = self._tool()
        log.info("building the Python %d.%d environment %s of %s: %d package(s) with %s",
                 *version, key, name, len(requirements), "uv" if uv else "pip")
        try:
            os.chmod(tmp, 0o755)
            env_dir = os.path.join(tmp, key)
            reqs = os.path.join(tmp, "requirements.txt")
            with open(reqs, "w") as f:
                f.write("".join(r.strip() + "\n" for r in requirements))
            deadline = time.monotonic() + self.timeout
            final = os.path.join(self.root, key)
            watch = functools.partial(self._watch, name, key, tmp)
            for argv in self._commands(uv, interpreter, env_dir, reqs, bool(requirements)):
                await self._run(name, requirements, argv, deadline, (env_dir, final), watch, tmp)
            size = await asyncio.to_thread(_seal, env_dir)
            with open(os.path.join(env_dir, ABOUT), "w") as f:
                json.dump({"python": "%d.%d" % version, "requirements": sorted(requirements),
                           "built": time.time(), "bytes": size}, f)
            os.chmod(os.path.join(env_dir, ABOUT), 0o644)
            os.rename(env_dir, final)
        finally:  # by a thread: a build stopped for its size holds up to envs_max_mb of files
            await asyncio.to_thread(shutil.rmtree, tmp, True)
        self.builds += 1
        log.info("built the Python environment %s of %s: %d package(s), %.1f MB, in %.1fs",
                 key, name, len(requirements), size / (1 << 20), time.monotonic() - t0)
        return size

    def _commands(self, uv: str, interpreter: str, env_dir: str, reqs: str,
                  install: bool) -> list[list[str]]:
        index = ["--index-url", self.index_url] if self.index_url else []
        python = os.path.join(env_dir, "bin", "python")
        if uv:
            cmds = [[uv, "venv", "--quiet", "--relocatable", "--python", interpreter, env_dir]]
            if install:
                cmds.append([uv, "pip", "install", "--no-build", "--python", python, *index,
                             "-r", reqs])
            return cmds
        cmds = [[interpreter, "-m", "venv", "--without-pip", env_dir]]
        if install:
            cmds.append([sys.executable, "-m", "pip", "--python", python, "install",
                         "--no-input", "--disable-pip-version-check", "--only-binary=:all:",
                         *index, "-r", reqs])
        return cmds

    async def _run(self, name: str, requirements: list[str], argv: list[str],
                   deadline: float, where: tuple[str, str],
                   watch: Callable[[], Awaitable[None]] | None = None, tmp: str = "") -> None:
        """Run one installer command until ``deadline``; a failure names the final
        place of the environment (``where``: (build dir, final dir)), not the build's.
        ``watch`` (awaited every :attr:`watch_every` s, or four times as long as it
        took the last time) raises to stop the build;
        ``tmp``: the installer's temporary directory (its downloads), inside the build's."""
        # no installer cache: it would keep every wheel ever installed outside the budget
        env = {**self.env, "UV_LINK_MODE": "copy", "UV_PYTHON_DOWNLOADS": "never",
               "UV_NO_PROGRESS": "1", "PIP_NO_INPUT": "1", "UV_NO_CACHE": "1",
               "PIP_NO_CACHE_DIR": "1"}
        if tmp:  # downloads and unpacked wheels count against the build's size
            env["TMPDIR"] = tmp
        # subprocess.Popen, not the loop's: uvloop cannot set a child's umask.
        # cwd: not the Spearlet's, so that no project file there steers the installer
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, cwd=self.root, umask=_UMASK,
                                start_new_session=True, close_fds=True)
        talk = asyncio.ensure_future(asyncio.to_thread(proc.communicate))
        every = self.watch_every
        try:
            while True:
                left = deadline - time.monotonic()
                step = min(left, every) if watch is not None else left
                try:
                    out, _ = await asyncio.wait_for(asyncio.shield(talk), max(0.01, step))
                    break
                except asyncio.TimeoutError:
                    if left <= step:
                        raise
                t0 = time.monotonic()
                await watch()  # raises to stop the build
                # a big build takes long to measure (~0.5 s for 57k files), in a thread
                # sharing the GIL with the loop: measure it at most a fifth of the time
                every = max(self.watch_every, 4 * (time.monotonic() - t0))
        except BaseException as exc:
            _kill_group(proc)  # the installer and anything it started
            try:
                await talk
            except BaseException:  # noqa: BLE001 - cancelled again: the thread ends anyway
                pass
            if isinstance(exc, asyncio.TimeoutError):
                raise errors.Unavailable(
                    f"{name}: building its Python environment on node {self.node or '?'} took "
                    f"over {self.timeout:g}s ([runtimes.process] env_build_timeout)") from None
            raise
        if proc.returncode != 0:
            output = out.decode("utf-8", "replace").replace(*where)
            raise self._failure(name, requirements, output)

    def _failure(self, name: str, requirements: list[str], output: str) -> errors.SpearError:
        """The typed error of a failed install: which requirement, what the installer said."""
        tail = output.strip()[-OUTPUT_TAIL:]
        # the requirements named where the installer complains, else anywhere
        complaints = "\n".join(line for line in output.lower().splitlines()
                                if _COMPLAINT.search(line))
        named: list[str] = []
        for text in (complaints, output.lower()):
            named = [r for r in requirements
                     if (m := _NAME.match(r.strip())) and m.group(0).lower() in text]
            if named:
                break
        what = (f"requirement {', '.join(repr(r) for r in named)}" if named else
                f"the requirements ({', '.join(map(repr, requirements))})" if requirements else
                "the environment")
        message = (f"{name}: {what} cannot be installed on node {self.node or '?'} "
                   f"(wheels only, no source builds); the installer said:\n{tail}")
        details = {"output": tail, "requirements": named or requirements}
        if _NETWORK.search(output) and not _UNRESOLVED.search(output):
            return errors.Unavailable(message, details=details)
        return errors.InvalidArgument(message, details=details)
