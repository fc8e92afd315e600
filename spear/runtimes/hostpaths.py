"""Host paths a function may reach: the one check every runtime calls.

A function reaches a host directory only through :meth:`HostPaths.grant`:
the wasm runtime for each ``dir:`` grant (the directory is preopened), the
process runtime for ``workdir`` (the directory the function starts in). The
docker runtime mounts no host path. The rule, deny by default:

* the node's operator lists the host roots functions may be given
  (``[spearlet] host_roots``, none by default), each read-only unless marked
  ``:rw``;
* a requested path is resolved once (``os.path.realpath``: ``..`` and
  symlinks are followed), and must lie inside a root (``os.path.commonpath``);
  the deepest root holding it decides whether it may be writable, and a
  writable grant may not hold a read-only root either;
* it may never be, lie inside, or contain one of the Spearlet's own
  directories (data, keys, configuration, the SMS store) or ``/proc`` (the
  Spearlet's memory and environment);
* refusals are :class:`~spear.errors.PermissionDenied` naming the grant and
  the allowed roots; a malformed path (relative, empty, NUL) or one that is
  not an existing directory is :class:`~spear.errors.InvalidArgument`.
  Permission is checked before existence, so a deployer cannot probe the
  host's file system outside the roots.

What is handed to the runtime is a capability, not a name: the directory is
opened (``O_PATH``) and the real path of that open handle is checked again,
so a rename or symlink swapped in after the check changes nothing; the
runtime opens ``/proc/self/fd/N`` (the same directory, whatever its name is
now) for as long as the handle lives.
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass
from typing import Iterable

from .. import errors

log = logging.getLogger("spear.runtimes.hostpaths")

__all__ = ["HostDir", "HostPaths", "Root", "parse_root"]

_PROC_FD = "/proc/self/fd"
#: the kernel's view of every process, the Spearlet's own memory and environment included
_ALWAYS_FORBIDDEN = (("/proc", "the kernel's process file system"),)


@dataclass(frozen=True)
class Root:
    """One host directory functions may be given, and whether writable."""

    path: str
    writable: bool = False

    def __str__(self) -> str:
        return f"{self.path} ({'rw' if self.writable else 'ro'})"


def parse_root(text: str) -> Root:
    """``"/srv/data"`` (read-only), ``"/srv/out:rw"`` or ``"/srv/x:ro"`` as a resolved Root."""
    path, writable = text, False
    for suffix, rw in ((":rw", True), (":ro", False)):
        if text.endswith(suffix):
            path, writable = text[: -len(suffix)], rw
            break
    if not path or "\0" in path or not os.path.isabs(path):
        raise errors.InvalidArgument(f"host root {text!r} is not an absolute path[:rw|:ro]")
    return Root(os.path.realpath(path), writable)


class HostDir:
    """A granted host directory: its checked real path and an open handle to it.

    ``handle_path`` is what a runtime opens: ``/proc/self/fd/N`` while the
    handle is open (it names the directory that was checked, whatever happens
    to its path later), else the real path. The handle is closed by
    :meth:`close` or when the object is collected.
    """

    __slots__ = ("path", "writable", "fd", "_finalizer", "__weakref__")

    def __init__(self, path: str, writable: bool, fd: int) -> None:
        self.path = path
        self.writable = writable
        self.fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd) if fd >= 0 else None

    @property
    def handle_path(self) -> str:
        """A path that reaches the granted directory through its open handle while it is open."""
        if self.fd >= 0 and self._finalizer is not None and self._finalizer.alive:
            return f"{_PROC_FD}/{self.fd}"
        return self.path

    def close(self) -> None:
        """Close the handle (the grant's path stays, the handle path does not)."""
        if self._finalizer is not None:
            self._finalizer()

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"HostDir({self.path!r}, {'rw' if self.writable else 'ro'}, fd={self.fd})"


class HostPaths:
    """The host directories the functions of one node may reach.

    ``roots``: ``"PATH"`` (read-only) or ``"PATH:rw"`` strings, or
    :class:`Root` objects; none (the default) refuses every host path.
    ``forbidden``: ``(path, what)`` pairs never granted, nor anything inside
    or above them (``/proc`` is always added).
    """

    def __init__(self, roots: Iterable[str | Root] = (),
                 forbidden: Iterable[tuple[str, str]] = ()) -> None:
        self.roots: tuple[Root, ...] = tuple(
            r if isinstance(r, Root) else parse_root(r) for r in roots)
        self.forbidden: tuple[tuple[str, str], ...] = ()
        for path, what in [*forbidden, *_ALWAYS_FORBIDDEN]:
            self.forbid(path, what)

    def forbid(self, path: str | os.PathLike, what: str) -> None:
        """Never grant ``path`` (nor anything inside or above it) from now on: a
        runtime adds the directories it keeps for all tenants (its code cache)."""
        if not path:
            return
        real = os.path.realpath(path)
        if any(p == real for p, _ in self.forbidden):
            return
        self.forbidden = (*self.forbidden, (real, what))
        for root in self.roots:
            if _inside(root.path, real):
                log.warning("host root %s lies inside %s (%s): nothing under it can be granted",
                            root.path, what, real)

    @classmethod
    def from_config(cls, config, *, data_dir: str | os.PathLike, config_file: str = "") -> "HostPaths":
        """The policy of a Spearlet: ``[spearlet] host_roots``, and its own
        data directory, key directories, configuration directory and the SMS
        store (``[storage] path``) forbidden."""
        sec = config.security
        forbidden = [(os.fspath(data_dir), "the Spearlet's data directory")]
        for key in (sec.key, sec.sms_key):
            if key:
                forbidden.append((os.path.dirname(os.path.abspath(key)), "the Spearlet's key directory"))
                forbidden.append((os.path.dirname(os.path.realpath(key)), "the Spearlet's key directory"))
        if config_file:
            forbidden.append((os.path.dirname(os.path.abspath(config_file)),
                              "the Spearlet's configuration directory"))
        if config.storage.path:
            forbidden.append((config.storage.path, "the SMS store"))
        for path in config.spearlet.private_paths:
            forbidden.append((path, "a private path ([spearlet] private_paths)"))
        return cls(config.spearlet.host_roots, forbidden)

    def describe_roots(self) -> str:
        """The allowed roots as text for error messages."""
        if not self.roots:
            return "none: this node allows no host paths ([spearlet] host_roots is empty)"
        return ", ".join(map(str, self.roots))

    def grant(self, path: str, *, write: bool, what: str) -> HostDir:
        """Check that a function may reach host directory ``path`` (writable
        if ``write``) and open it; ``what`` names the request in errors, e.g.
        ``"fn: grant 'dir:/srv/data'"``. The chokepoint of the rule above."""
        if not path or "\0" in path or not os.path.isabs(path):
            raise errors.InvalidArgument(f"{what}: {path!r} is not an absolute path")
        real = os.path.realpath(path)
        self._check(real, path, write, what)
        try:
            fd = os.open(real, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            raise errors.InvalidArgument(f"{what}: {path!r} is not an existing directory") from None
        if not os.path.isdir(_PROC_FD):  # no /proc: the checked path is all there is
            os.close(fd)
            return HostDir(real, write, -1)
        try:
            # what was opened may not be what was checked (a rename or a symlink
            # swapped in meanwhile): check the real path of the handle itself
            held = os.readlink(f"{_PROC_FD}/{fd}")
            if held != real:
                self._check(held, path, write, what)
        except BaseException:
            os.close(fd)
            raise
        return HostDir(held, write, fd)

    def _check(self, real: str, requested: str, write: bool, what: str) -> None:
        # the resolved path is not shown: it would map the host outside the roots
        shown = repr(requested) if real == requested else f"{requested!r} (with '..' and symlinks resolved)"
        allowed = self.describe_roots()
        holders = [r for r in self.roots if _inside(real, r.path)]
        if not holders:
            raise errors.PermissionDenied(
                f"{what}: {shown} is outside the host roots this node allows; "
                f"allowed host roots: {allowed}",
                details={"grant": what, "allowed_roots": [str(r) for r in self.roots]})
        for path, kind in self.forbidden:
            if _inside(real, path) or _inside(path, real):
                log.warning("%s refused: %s is, lies in or holds %s (%s)", what, real, kind, path)
                raise errors.PermissionDenied(
                    f"{what}: {shown} is, lies inside or contains {kind}, which is never "
                    f"granted; allowed host roots: {allowed}",
                    details={"grant": what, "allowed_roots": [str(r) for r in self.roots]})
        if write:
            deepest = max(holders, key=lambda r: len(r.path))
            held_ro = [r for r in self.roots if not r.writable and _inside(r.path, real)]
            if not deepest.writable or held_ro:
                ro = deepest if not deepest.writable else held_ro[0]
                raise errors.PermissionDenied(
                    f"{what}: {shown} asks for write access but {ro.path} is a read-only "
                    f"host root; grant it read-only (:ro); allowed host roots: {allowed}",
                    details={"grant": what, "allowed_roots": [str(r) for r in self.roots]})


def _inside(path: str, parent: str) -> bool:
    """True if ``path`` is ``parent`` or below it (both real, absolute paths)."""
    return os.path.commonpath([path, parent]) == parent
