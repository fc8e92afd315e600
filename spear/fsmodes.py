"""Private files and directories: data directories 0700, files and keys 0600.

A node's data holds what other users of the host must not read: function
inputs and environment values in the SMS store, artifacts and caches under a
Spearlet's data directory, CURVE secret keys. Three rules keep them private:

* :func:`private_dir` at start: a missing directory is made 0700 (missing
  parents too); an existing one is walked, and every group or other
  permission bit on it or under it is taken away with a WARNING that names
  the path and its old mode. What cannot be fixed (a file of another user)
  stops the start with a :class:`~spear.errors.ConfigError` naming the path.
* :func:`daemon_umask` once in a daemon's ``main``: files written later
  (LevelDB makes new tables as it compacts) are born 0600, directories 0700.
* :func:`private_key_file` when a secret key is loaded: readable by group or
  other, it is fixed to 0600 with a warning, or refused when it cannot be.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger("spear.fsmodes")

#: the umask every daemon runs with: nothing for group or other
DAEMON_UMASK = 0o077
#: the umask a function's process starts with (it writes for its own users)
FUNCTION_UMASK = 0o022
_OPEN = 0o077  # group and other bits
#: fixed paths named one by one in the log; the rest are counted
_LOGGED = 10


def daemon_umask() -> int:
    """Make the process umask at least 077; returns the previous one."""
    old = os.umask(DAEMON_UMASK)
    os.umask(old | DAEMON_UMASK)
    return old


def private_opener(path: str, flags: int) -> int:
    """``open(..., opener=private_opener)``: a file created 0600 whatever the umask."""
    return os.open(path, flags, 0o600)


def write_private(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a file that is 0600 from its first byte."""
    with open(path, "wb", opener=private_opener) as fh:
        fh.write(data)
    _tighten(str(path), os.stat(path), what="file")


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _tighten(path: str, st: os.stat_result, *, what: str, to: int | None = None) -> bool:
    """Take group/other bits off ``path`` (or set mode ``to``); True if it had some.

    Raises ConfigError when the mode cannot be changed."""
    mode = stat.S_IMODE(st.st_mode)
    if not mode & _OPEN:
        return False
    try:
        os.chmod(path, mode & ~_OPEN if to is None else to)
    except FileNotFoundError:  # removed meanwhile (a store compacting): nothing to protect
        return False
    except OSError as exc:
        raise ConfigError(
            f"{what} {path}: mode {mode:04o} (owner uid {st.st_uid}) lets other users read it, "
            f"and it cannot be made private ({exc.strerror or exc}); make it "
            f"{'0700' if stat.S_ISDIR(st.st_mode) else '0600'} or run as its owner"
        ) from None
    return True


def private_dir(path: str | os.PathLike, *, what: str = "data directory",
                recursive: bool = True) -> Path:
    """Create ``path`` 0700, or make an existing one (and, ``recursive``, all under it) private.

    ``what`` names the directory in messages (e.g. ``"[spearlet] data"``).
    Symbolic links inside are left alone (never followed); the top directory
    itself may be one. A shared directory (sticky bit, like /tmp) is refused:
    making it private would lock its other users out. Returns the path.
    """
    root = Path(path)
    missing = []
    p = root
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by someone else: checked below
            pass
        except OSError as exc:
            raise ConfigError(f"{what} {root}: cannot create {d}: {exc.strerror or exc}") from None
    if not root.is_dir():
        raise ConfigError(f"{what} {root}: not a directory")
    fixed: list[tuple[str, str]] = []
    st = os.stat(root)
    if st.st_mode & stat.S_ISVTX:
        raise ConfigError(f"{what} {root}: a shared directory (mode {_mode(st)}, sticky) cannot "
                          f"be made private; name a directory of its own inside it")
    if _tighten(str(root), st, what=what):
        fixed.append((str(root), _mode(st)))
    for top, dirs, files in os.walk(root) if recursive else ():
        for name in dirs + files:
            full = os.path.join(top, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:  # removed while we looked
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            if _tighten(full, st, what=what):
                fixed.append((full, _mode(st)))
    for full, old in fixed[:_LOGGED]:
        log.warning("SECURITY: %s %s: %s was mode %s, readable by other users: made it private",
                    what, root, full, old)
    if len(fixed) > _LOGGED:
        log.warning("SECURITY: %s %s: %d more paths were readable by other users: made them private",
                    what, root, len(fixed) - _LOGGED)
    return root


def private_key_file(path: str | os.PathLike, *, what: str = "[security] key") -> None:
    """A secret key file readable by group/other is made 0600 (warned) or refused."""
    try:
        st = os.stat(path)
    except OSError:
        return  # the loader reports a missing file in its own words
    if _tighten(str(path), st, what=what, to=0o600):
        log.warning("SECURITY: %s %s was mode %s, readable by other users: made it 0600",
                    what, path, _mode(st))
