"""Python handlers that misbehave, for tests/runtimes/test_limits.py (standard library only)."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def big(data: bytes) -> bytes:
    """Return ``data`` MiB of output (96 by default)."""
    return b"x" * (int(data or b"96") << 20)


def spin(data: bytes) -> str:
    end = time.time() + float(data or b"30")
    while time.time() < end:
        pass
    return "spun"


def escape(data: bytes) -> str:
    """Start a daemon that leaves the session (setsid, double fork); write its pid to ``data``."""
    code = (
        "import os, sys, time\n"
        "if os.fork(): os._exit(0)\n"
        "os.setsid()\n"
        "if os.fork(): os._exit(0)\n"
        "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n"
    )
    subprocess.run([sys.executable, "-c", code, data.decode()], check=True)
    deadline = time.time() + 5
    while time.time() < deadline and not os.path.getsize(data.decode()):
        time.sleep(0.01)
    return "escaped"


def hog(data: bytes) -> str:
    """Start ``data`` children that each touch 64 MiB, and wait for them."""
    n = int(data or b"4")
    code = "b = bytearray(64 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nimport time; time.sleep(5)"
    kids = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    codes = [k.wait() for k in kids]
    return f"children exited {codes}"


def pid(data: bytes) -> str:
    return str(os.getpid())
