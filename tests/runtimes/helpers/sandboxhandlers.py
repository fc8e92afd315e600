"""Python handlers used by tests/runtimes/test_sandbox.py (standard library only)."""

from __future__ import annotations

import os
import socket
import time


def read(data: bytes) -> bytes:
    """Return the contents of the file named by ``data``."""
    with open(data.decode(), "rb") as f:
        return f.read()


def connect(data: bytes) -> str:
    """Connect to ``host:port`` and say so; raise what connect raises."""
    host, _, port = data.decode().rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5):
        return "connected"


def whoami(data: bytes) -> dict:
    return {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
            "groups": os.getgroups(), "pid": os.getpid()}


def touch(data: bytes) -> dict:
    """Create a file in the working directory; report where and who owns it."""
    path = os.path.join(os.getcwd(), "made-by-the-function")
    with open(path, "w") as f:
        f.write("x")
    return {"path": path, "owner": os.stat(path).st_uid}


def sleep(data: bytes) -> str:
    time.sleep(float(data or b"30"))
    return "slept"


def peek(data: bytes) -> dict:
    """What this function can read of process ``data`` (a pid) through /proc."""
    out = {}
    for name in ("environ", "maps", "fd"):
        path = f"/proc/{int(data)}/{name}"
        try:
            if name == "fd":
                out[name] = len(os.listdir(path))
            else:
                with open(path, "rb") as f:
                    out[name] = len(f.read())
        except OSError as exc:
            out[name] = type(exc).__name__
    return out


def probe(data: bytes) -> dict:
    """What this function can do to process ``data`` (a pid): signal it, read its
    environment; and who it is."""
    pid = int(data)
    import getpass

    out: dict = {"uid": os.getuid(), "gid": os.getgid(), "user": getpass.getuser()}
    try:
        os.kill(pid, 0)
        out["signal"] = "ok"
    except OSError as exc:
        out["signal"] = type(exc).__name__
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            out["environ"] = len(f.read())
    except OSError as exc:
        out["environ"] = type(exc).__name__
    return out
