"""What a wakeup per call costs: small requests through a bare child's pipes,
one at a time and with several in flight.

A pooled worker gets one request at a time: after each reply it sleeps in
``read`` and the next request wakes it. This measures, without any Spear
code, the round trips per second and the CPU per round trip of the parent
and of the child (``bench/floor/pipe_echo.py``) when ``depth`` requests are
kept in the pipe, so the cost of that sleep and wakeup can be read off::

    python bench/pipe_depth.py            # depths 1, 2, 4, 8, 32
    python bench/pipe_depth.py 1 8 --n 50000
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import psutil

ECHO = Path(__file__).resolve().parent / "floor" / "pipe_echo.py"
_U32 = struct.Struct(">I")


def run(depth: int, n: int) -> dict:
    """``n`` round trips of a 10-byte request with ``depth`` in flight."""
    child = subprocess.Popen([sys.executable, str(ECHO)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, bufsize=0)
    wfd, rfd = child.stdin.fileno(), child.stdout.fileno()
    request = _U32.pack(10) + b"x" * 10
    theirs, ours = psutil.Process(child.pid), psutil.Process()
    c0, m0, t0 = sum(theirs.cpu_times()[:2]), sum(ours.cpu_times()[:2]), time.perf_counter()
    sent = got = 0
    buf = b""
    while got < n:
        while sent - got < depth and sent < n:
            os.write(wfd, request)
            sent += 1
        buf += os.read(rfd, 1 << 16)
        while len(buf) >= 4:
            size = _U32.unpack_from(buf)[0]
            if len(buf) < 4 + size:
                break
            buf = buf[4 + size:]
            got += 1
    seconds = time.perf_counter() - t0
    c1, m1 = sum(theirs.cpu_times()[:2]), sum(ours.cpu_times()[:2])
    child.stdin.close()
    child.wait()
    return {"depth": depth, "rate": n / seconds, "parent_us": (m1 - m0) / n * 1e6,
            "child_us": (c1 - c0) / n * 1e6}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("depths", nargs="*", type=int, default=[1, 2, 4, 8, 32])
    ap.add_argument("--n", type=int, default=20000, help="round trips per depth")
    args = ap.parse_args(argv)
    for depth in args.depths:
        r = run(depth, args.n)
        print(f"depth {r['depth']:3d}: {r['rate']:>9,.0f} round trips/s, CPU per round trip: "
              f"parent {r['parent_us']:.1f} us, child {r['child_us']:.1f} us")


if __name__ == "__main__":
    main()
