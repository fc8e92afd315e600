"""Requirements of a Python function, read and resolved on the deployer's machine.

A deploy resolves its requirement lines once, here, to exact pins
(``name==version``) with uv, so that a package that does not exist or a
set that conflicts is a clear error at deploy time rather than on the
first call, and every node builds the same environment. Resolution is
universal (markers kept for other platforms) and wheels-only, as nodes
install wheels only. Without uv the lines are deployed as they are, and
the nodes' installer is the judge.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from typing import Callable, Iterable

from .. import errors
from ..specs import check_requirement

log = logging.getLogger(__name__)
RESOLVE_TIMEOUT = 300.0


def this_python() -> str:
    """``major.minor`` of this interpreter: what functions pickled here need."""
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def read_file(path: str | os.PathLike) -> list[str]:
    """The requirement lines of a ``requirements.txt`` (comments and blanks dropped).

    Options (``-r``, ``--index-url``, ``-e`` ...), paths and URLs are refused
    with INVALID_ARGUMENT naming the line: nodes install from their index.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise errors.InvalidArgument(f"cannot read requirements file {path}: {exc.strerror}") from None
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            lines.append(check_requirement(line))
        except errors.InvalidArgument as exc:
            raise errors.InvalidArgument(f"{path}:{number}: {exc.message}") from None
    return lines


def uv_binary() -> str | None:
    """The uv executable: the ``uv`` package's, else one on PATH."""
    try:
        import uv

        return uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def resolve(lines: Iterable[str], python: str | None = None,
            progress: Callable[[str], None] | None = None) -> list[str]:
    """Exact pins for ``lines`` on Python ``python`` (default: this one).

    INVALID_ARGUMENT with the resolver's explanation when they cannot be
    resolved; UNAVAILABLE when the resolver cannot run (network, timeout).
    ``progress`` hears a line before and after.
    """
    wanted = [check_requirement(line) for line in lines]
    if not wanted:
        return []
    python = python or this_python()
    uv = uv_binary()
    if uv is None:
        log.warning("uv is not installed: requirements are deployed unresolved")
        return wanted
    say = progress or (lambda text: None)
    say(f"resolving {len(wanted)} requirement(s) for Python {python} ...")
    argv = [uv, "pip", "compile", "-", "--quiet", "--no-header", "--no-annotate", "--universal",
            "--no-build", "--python-version", python]
    try:
        done = subprocess.run(argv, input="\n".join(wanted) + "\n", capture_output=True,
                              text=True, timeout=RESOLVE_TIMEOUT, env=_uv_env())
    except subprocess.TimeoutExpired:
        raise errors.Unavailable(f"resolving {', '.join(wanted)} took over "
                                 f"{RESOLVE_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        why = _tail(done.stderr or done.stdout)
        kind = errors.Unavailable if _network_trouble(why) else errors.InvalidArgument
        raise kind(f"requirements {', '.join(wanted)} cannot be installed: {why}")
    pins = [line.strip() for line in done.stdout.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    say(f"resolved to {len(pins)} package(s): {', '.join(p.split(';')[0].strip() for p in pins)}")
    return [check_requirement(p) for p in pins]


def _uv_env() -> dict[str, str]:
    from ..config import child_env

    env = child_env()  # the deployer's own: proxies, certificates, uv settings
    env.setdefault("UV_PYTHON_DOWNLOADS", "never")
    return env


def _network_trouble(text: str) -> bool:
    lowered = text.lower()
    return any(w in lowered for w in ("network", "connection", "timed out", "dns", "failed to fetch"))


def _tail(text: str, limit: int = 1500) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]
