"""The sandbox of process functions: who they run as, and without network.

When the Spearlet runs as root, functions run as an unprivileged user
(``user="auto"``: ``nobody``, no supplementary groups), so they cannot read
the Spearlet's key files; and a function whose ``limits.network`` is false
starts in a new, empty network namespace (only a loopback that is down): it
can connect nowhere, not even to 127.0.0.1. Both are done by exec'ing
util-linux ``unshare`` in front of the command (``unshare --net -G gid -S uid
-- cmd``), which keeps the cheap vfork spawn path and the same pid. A
non-root Spearlet isolates the network with a user namespace (``unshare
--user --map-current-user --net``) where the kernel allows it; where no
isolation is possible such functions are refused with ``Unavailable``
(``strict_network=True``, the default) or run with network after one warning
(``strict_network=False``). See ``docs/sandbox.md``; use the docker runtime
for hostile code (all sandboxed functions share one user unless ``user`` is
``"per-function"``).

:class:`Sandbox` wraps a prepared command accordingly (:meth:`Sandbox.wrap`);
:func:`denied` says, at deploy time, why the sandbox user could not reach a
path, so that a function it cannot run fails its deploy, not its calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from ... import errors
from .codecache import make_dirs

log = logging.getLogger(__name__)


#: Where the sandbox tools (util-linux ``unshare``) and fallback interpreters are looked up.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NOBODY = 65534  # the overflow uid/gid, used if the system has no "nobody" entry
_PY_NAME = re.compile(r"^python(\d+)\.(\d+)$")
#: Variables through which the dynamic loader or libc of a *root* process can be
#: made to load code or files of the function's choosing: the list glibc itself
#: strips for setuid programs, plus every ``LD_*``, ``GLIBC_*`` and ``MALLOC_*``.
#: The root-run ``unshare`` never sees them; ``env`` sets them again after the
#: switch to the sandbox user, so the function still gets them.
LOADER_VARS = frozenset(
    {
        "GCONV_PATH", "GETCONF_DIR", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH", "NIS_PATH",
        "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR",
        # and what a shell acts on: the root-run gate is ``sh -c``
        "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "IFS", "CDPATH", "POSIXLY_CORRECT",
    }
)


def loader_sensitive(name: str) -> bool:
    """Whether ``name`` must never reach a root-run program (see :data:`LOADER_VARS`)."""
    return name in LOADER_VARS or name.startswith(("LD_", "GLIBC_", "MALLOC_", "BASH_FUNC_"))


@dataclass(frozen=True)
class User:
    """The unprivileged identity functions run as (set only when it differs from ours)."""

    name: str
    uid: int
    gid: int


#: ``[runtimes.process] user`` for a user of its own per function (root only)
PER_FUNCTION = "per-function"
#: the uids (each its own gid too) of per-function users: this base plus a number
#: drawn from the function's name, below 0x7FFF0000 (systemd's reserved top range)
#: and above the ranges that systems and container tools hand out
FUNCTION_UID_BASE = 0x70000000
FUNCTION_UID_SPAN = 0x0FFF0000


def function_uid(name: str) -> int:
    """The uid of function ``name``'s own user: the same on every node and after a restart
    (two names may draw the same one: :meth:`Sandbox.user_for` then refuses the second)."""
    n = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % FUNCTION_UID_SPAN
    return FUNCTION_UID_BASE + n


def claim_uid(claims: str, uid: int, name: str) -> str:
    """Bind ``uid`` to function ``name`` for good in the directory ``claims`` (file
    ``<uid>`` holding the name, made atomically); returns the name it is bound to."""
    make_dirs(os.path.dirname(claims))  # the cache's own (0755: the sandbox user goes through)
    os.makedirs(claims, mode=0o700, exist_ok=True)
    path = os.path.join(claims, str(uid))
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{uid}-", dir=claims)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(name)
        try:
            os.link(tmp, path)  # atomic, and never replaces another's claim
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    with open(path, encoding="utf-8") as f:
        return f.read()


def resolve_user(user: str | None, euid: int) -> User | None:
    """The identity to switch to, or None to run functions as the Spearlet's own user.

    ``"auto"``: ``nobody`` when we are root, else ourselves. ``None``/``""``:
    ourselves. A name or numeric uid: that user (only root can switch).
    ``"per-function"`` (root only): a user of its own per function (see
    :meth:`Sandbox.user_for`); ``nobody`` is returned for the checks made at
    deploy time, which then hold for any user that owns nothing on the host.
    """
    if not user:
        return None
    if user == PER_FUNCTION and euid != 0:
        raise ValueError("a user per function ([runtimes.process] user = \"per-function\") "
                         "needs a Spearlet running as root")
    if user in ("auto", PER_FUNCTION):
        if euid != 0:
            return None
        try:
            pw = pwd.getpwnam("nobody")
            return User("nobody", pw.pw_uid, pw.pw_gid)
        except KeyError:
            return User("nobody", _NOBODY, _NOBODY)
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise ValueError(f"no such user: {user!r}") from None
        uid = int(user)
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            found = User(user, uid, uid)
        else:
            found = User(pw.pw_name, pw.pw_uid, pw.pw_gid)
    else:
        found = User(pw.pw_name, pw.pw_uid, pw.pw_gid)
    if found.uid == euid:
        return None  # already that user: nothing to switch
    if euid != 0:
        raise ValueError(f"cannot run functions as {user!r}: the Spearlet is not root")
    return found


def _allows(st: os.stat_result, user: User, bit: int) -> bool:
    """Whether the permission bits of ``st`` grant ``bit`` (4 r, 2 w, 1 x) to ``user``.

    The user has no supplementary groups (we clear them). ACLs are not read.
    """
    if user.uid == 0:
        return bit != 1 or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == user.uid:
        return bool((st.st_mode >> 6) & bit)
    if st.st_gid == user.gid:
        return bool((st.st_mode >> 3) & bit)
    return bool(st.st_mode & bit)


def denied(
    path: str, user: User | None, *, read: bool = False, execute: bool = False
) -> str | None:
    """Why ``user`` cannot reach ``path`` (and read / execute / enter it), or None if it can.

    Every directory on the way must be searchable, both along the path as
    written and along its resolved form (symlinks).
    """
    if user is None:
        return None
    path = os.path.abspath(path)
    real = os.path.realpath(path)
    dirs: list[str] = []
    for p in (path, real):
        d = os.path.dirname(p)
        chain = []
        while True:
            chain.append(d)
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
        dirs.extend(reversed(chain))
    seen: set[str] = set()
    for d in dirs:
        if d in seen:
            continue
        seen.add(d)
        try:
            st = os.stat(d)
        except OSError as exc:
            return f"{d}: {exc.strerror}"
        if not _allows(st, user, 1):
            return f"{d} is not searchable by {user.name} (mode {stat.filemode(st.st_mode)})"
    try:
        st = os.stat(real)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if read and not _allows(st, user, 4):
        return f"{real} is not readable by {user.name} (mode {stat.filemode(st.st_mode)})"
    if execute and not _allows(st, user, 1):
        what = "searchable" if stat.S_ISDIR(st.st_mode) else "executable"
        return f"{real} is not {what} by {user.name} (mode {stat.filemode(st.st_mode)})"
    return None


def is_script(path: str) -> bool:
    """Whether ``path`` starts with ``#!`` (its user must read it, not only execute it)."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def python_version(path: str) -> tuple[int, int] | None:
    """major.minor of an interpreter, from what we know without running it."""
    real = os.path.realpath(path)
    if real == os.path.realpath(sys.executable):
        return sys.version_info[:2]
    m = _PY_NAME.match(os.path.basename(real))
    return (int(m.group(1)), int(m.group(2))) if m else None


def python_denied(path: str, user: User | None) -> str | None:
    """Why ``user`` cannot run the interpreter ``path`` (binary, then its standard library)."""
    why = denied(path, user, execute=True)
    if why or user is None:
        return why
    real = os.path.realpath(path)
    if real == os.path.realpath(sys.executable):
        stdlib = os.path.dirname(os.path.abspath(os.__file__))
    else:
        stdlib = os.path.join(os.path.dirname(os.path.dirname(real)), "lib")
    if os.path.isdir(stdlib):
        return denied(stdlib, user, read=True, execute=True)
    return None


def probe_isolation(unshare: str | None, root: bool) -> tuple[list[str] | None, str]:
    """The ``unshare`` prefix that gives a process a new, empty network namespace here.

    Returns ``(prefix, "")`` or ``(None, why not)``. Runs the prefix once to be
    sure (a container without CAP_SYS_ADMIN, or a kernel refusing user
    namespaces to unprivileged users, fails only when tried).
    """
    if unshare is None:
        return None, "the unshare program (util-linux) is not installed"
    if root:
        tries = [[unshare, "--net"]]
    else:  # a user namespace gives an unprivileged user its own network namespace
        tries = [[unshare, "--user", "--map-current-user", "--net"], [unshare, "--user", "--net"]]
    why = ""
    for prefix in tries:
        try:
            r = subprocess.run(
                [*prefix, "--", unshare, "--version"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={"PATH": SYSTEM_PATH, "LANG": "C"},
                timeout=10,
                close_fds=True,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            why = str(exc)
            continue
        if r.returncode == 0:
            return prefix, ""
        lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
        why = lines[-1] if lines else f"{' '.join(prefix)} exited with {r.returncode}"
    return None, why


class Sandbox:
    """The sandbox of one runtime: its user, its ``unshare`` and its network rule.

    ``user``: the identity functions are switched to (None: they run as we
    do). ``strict_network``: refuse a function denied the network where no
    namespace can be made (else run it with network after one warning).
    """

    def __init__(self, user: User | None, *, strict_network: bool = True,
                 per_function: bool = False) -> None:
        self.user = user
        #: each function runs as a user of its own (see :meth:`user_for`)
        self.per_function = per_function and user is not None
        self._uids: dict[str, int] = {}  # function -> the uid of its user here
        #: where uids are bound to functions for good (file ``<uid>`` holds the name), so
        #: that a uid never changes hands across restarts or Spearlets sharing it
        self.claims: str | None = None
        self.strict_network = strict_network
        self.root = os.geteuid() == 0
        #: util-linux unshare (None: no namespaces, the user switch is done by subprocess)
        self.unshare = shutil.which("unshare", path=SYSTEM_PATH)
        self._isolation: tuple[list[str] | None, str] | None = None  # probed on first need
        self._warned_network = False

    def user_for(self, name: str) -> User | None:
        """The user function ``name`` runs as: :attr:`user`, or with ``per_function`` a
        user of its own (uid = gid, no passwd entry), so that no function can signal
        another's processes, read their ``/proc`` entries or write their files."""
        if not self.per_function:
            return self.user
        uid = self._uids.get(name)
        if uid is None:
            uid = function_uid(name)
            owner = next((n for n, u in self._uids.items() if u == uid), None)
            if owner is None and self.claims is not None:
                try:
                    owner = claim_uid(self.claims, uid, name)
                except OSError as exc:
                    raise errors.Unavailable(
                        f"{name}: cannot record the uid of its user in {self.claims}: {exc}"
                    ) from None
            if owner is not None and owner != name:
                raise errors.InvalidArgument(
                    f"{name}: the uid of its own user ({uid}) is already function {owner!r}'s "
                    "on this host (drawn from the names); deploy it under another name"
                )
            self._uids[name] = uid
        return User(f"spear-{uid}", uid, uid)

    async def network_isolation(self) -> tuple[bool, str]:
        """``(True, "")`` if functions can be denied the network here, else ``(False, why)``."""
        if self._isolation is None:
            self._isolation = await asyncio.to_thread(probe_isolation, self.unshare, self.root)
        prefix, why = self._isolation
        return prefix is not None, why

    async def network_prefix(self, name: str) -> list[str]:
        """The ``unshare`` prefix for a function denied the network ([] if it may not be)."""
        ok, why = await self.network_isolation()
        if ok:
            return list(self._isolation[0])
        message = (
            f"network isolation needs root or user namespaces ({why}); "
            "deploy with limits.network=true to allow network"
        )
        if self.strict_network:
            raise errors.Unavailable(f"{name}: {message}", details={"reason": why})
        if not self._warned_network:
            self._warned_network = True
            log.warning(
                "process functions with limits.network=false will HAVE network: %s", message
            )
        return []

    async def wrap(self, name: str, argv: list[str], executable: str, env: dict[str, str],
                   network: bool) -> tuple[list[str], str | None, dict[str, str], dict]:
        """Put the sandbox in front of ``argv``: returns (argv, executable, env, popen_kw).

        With a wrapper, ``argv`` starts with ``unshare ... --`` and
        ``executable`` is None; ``popen_kw`` holds ``user``/``group`` only
        when the switch must be done by ``subprocess`` itself (no ``unshare``
        on this system). Loader-sensitive variables never reach the root-run
        wrapper: ``env`` sets them again after the switch.
        """
        user = self.user_for(name)
        wrapper = [] if network else await self.network_prefix(name)
        popen_kw: dict = {}
        if user is not None:
            if self.unshare is not None:  # unshare switches ids after making namespaces
                wrapper = (wrapper or [self.unshare]) + ["-G", str(user.gid), "-S", str(user.uid)]
            else:  # no vfork then: slower to spawn from a big Spearlet, but correct
                popen_kw = {"user": user.uid, "group": user.gid, "extra_groups": []}
        if not wrapper:
            return argv, executable, env, popen_kw
        target = [executable]
        moved = {k: v for k, v in env.items() if loader_sensitive(k)}
        if moved and user is not None:  # never let them reach the root-run wrapper
            env_tool = shutil.which("env", path=SYSTEM_PATH)
            if env_tool is None or "=" in executable:
                raise errors.InvalidArgument(
                    f"{name}: cannot pass {', '.join(sorted(moved))} to a sandboxed "
                    + ("command whose path contains '='" if env_tool else "command: no env program")
                )
            env = {k: v for k, v in env.items() if k not in moved}
            target = [env_tool, "--", *(f"{k}={v}" for k, v in moved.items()), executable]
        return [*wrapper, "--", *target, *argv[1:]], None, env, popen_kw
