"""Code bundles: a directory packed into a deterministic zip, and unpacked safely.

A bundle is the ``artifact`` of a Python function: the client packs a
directory (:func:`pack`), the SMS stores it once by SHA-256, and each node
unpacks it (:func:`unpack`) into its code cache. Packing is deterministic
(sorted names, fixed dates and modes), so the same files give the same
digest on every machine and a redeploy of unchanged code stores nothing new.

Only regular files travel; symbolic links, caches and virtual environments
(:data:`SKIP_DIRS`, ``*.pyc``) are left out. Unpacking trusts nothing in the
archive: absolute names, ``..``, links, too many files or too many bytes
(a zip bomb) are refused with INVALID_ARGUMENT. Imports only
:mod:`spear.errors` and :mod:`spear.protocol`.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tempfile
import zipfile
import zlib

from . import errors
from .protocol import MAX_PAYLOAD

#: directory names never packed
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".tox", ".nox",
                       ".mypy_cache", ".pytest_cache", ".ruff_cache", "node_modules", ".spear",
                       ".ipynb_checkpoints"})
SKIP_SUFFIXES = (".pyc", ".pyo")
#: limits of an unpacked bundle
MAX_FILES = 20_000
MAX_UNPACKED = 1 << 30
_DATE = (1980, 1, 1, 0, 0, 0)


def sha256(data: bytes | memoryview) -> str:
    """The hex SHA-256 of a bundle (or any artifact): its name everywhere."""
    return hashlib.sha256(data).hexdigest()


def _files(root: str):
    """(archive name, path) of every regular file under ``root``, sorted."""
    found = []
    for top, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")
                         and not os.path.islink(os.path.join(top, d)))
        for name in names:
            path = os.path.join(top, name)
            if name.endswith(SKIP_SUFFIXES) or os.path.islink(path) or not os.path.isfile(path):
                continue
            found.append((os.path.relpath(path, root).replace(os.sep, "/"), path))
    return sorted(found)


def pack(root: str | None, extra: dict[str, bytes] | None = None,
         max_bytes: int = MAX_PAYLOAD) -> bytes:
    """Zip the files under ``root`` (None: none) plus ``extra`` (name -> bytes).

    INVALID_ARGUMENT when ``root`` is not a directory or the bundle would be
    larger than ``max_bytes`` (the largest payload a message may carry).
    """
    if root is not None and not os.path.isdir(root):
        raise errors.InvalidArgument(f"{root!r} is not a directory")
    buf = io.BytesIO()
    entries = sorted((extra or {}).items())
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        names = set()
        for name, path in _files(root) if root is not None else ():
            mode = 0o755 if os.stat(path).st_mode & 0o111 else 0o644
            with open(path, "rb") as f:
                _add(zf, name, f.read(), mode)
            names.add(name)
            if buf.tell() > max_bytes:
                break
        for name, data in entries:
            if name not in names:
                _add(zf, name, data, 0o644)
    data = buf.getvalue()
    if len(data) > max_bytes:
        where = f"the files under {root}" if root else "the bundle"
        raise errors.InvalidArgument(
            f"{where} pack to more than {max_bytes >> 20} MiB; keep data out of the code "
            f"directory (skipped: {', '.join(sorted(SKIP_DIRS))})")
    return data


def _add(zf: zipfile.ZipFile, name: str, data: bytes, mode: int) -> None:
    info = zipfile.ZipInfo(name, _DATE)
    info.external_attr = (stat.S_IFREG | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)


def _checked_name(info: zipfile.ZipInfo) -> str:
    name = info.filename
    parts = name.rstrip("/").split("/")
    if (not name or name.startswith("/") or "\\" in name or "\0" in name
            or any(p in ("", ".", "..") for p in parts)):
        raise errors.InvalidArgument(f"bundle entry {name!r} is not a plain relative path")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise errors.InvalidArgument(f"bundle entry {name!r} is not a regular file")
    return name


def unpack(data: bytes, dest: str, max_files: int = MAX_FILES,
           max_bytes: int = MAX_UNPACKED) -> str:
    """Unpack bundle ``data`` to the directory ``dest`` (made whole, or left as it is).

    Files get mode 0644 (0755 if executable), directories 0755: readable by
    the sandbox user, writable by nobody but the node. The archive is
    extracted next to ``dest`` and renamed into place, so a reader never
    sees half a bundle; if ``dest`` already exists it is kept.
    """
    if os.path.isdir(dest):
        return dest
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise errors.InvalidArgument(f"the artifact is not a code bundle (zip): {exc}") from None
    infos = zf.infolist()
    if len(infos) > max_files:
        raise errors.InvalidArgument(f"bundle has {len(infos)} entries, over {max_files}")
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".unpack-", dir=parent)
    try:
        os.chmod(tmp, 0o755)
        total = 0
        for info in infos:
            name = _checked_name(info)
            target = os.path.join(tmp, *name.rstrip("/").split("/"))
            if info.is_dir():
                os.makedirs(target, mode=0o755, exist_ok=True)
                continue
            total += info.file_size
            if total > max_bytes:
                raise errors.InvalidArgument(f"bundle unpacks to more than {max_bytes >> 20} MiB")
            _make_dirs(tmp, os.path.dirname(target))
            mode = 0o755 if (info.external_attr >> 16) & 0o111 else 0o644
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            try:
                with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                    _copy(src, out, info.file_size)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                # a damaged or lying entry (its CRC, sizes or compression)
                raise errors.InvalidArgument(f"bundle entry {name!r} is damaged: {exc}") from None
            os.chmod(target, mode)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not os.path.isdir(dest):  # lost a race with another unpack: theirs is whole
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _make_dirs(top: str, path: str) -> None:
    if path != top and not os.path.isdir(path):
        _make_dirs(top, os.path.dirname(path))
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)


def _copy(src, out, size: int) -> None:
    """Copy at most ``size`` bytes (what the entry declares; more is a lie)."""
    left = size
    while True:
        chunk = src.read(1 << 20)
        if not chunk:
            return
        left -= len(chunk)
        if left < 0:
            raise errors.InvalidArgument("bundle entry is larger than it declares")
        out.write(chunk)
