"""Helpers shared by every test package: bounded polling, ports, the CLI, raw sockets.

A plain module, imported as ``from tests.helpers import wait_for`` (the
repository root is on ``sys.path``: ``pythonpath`` in pyproject.toml), so that
non-test code under tests/ (the fuzz harness, the multi-host checks) can use
it too; fixtures stay in the conftest.py of the folder that needs them.
It imports spear and its dependencies (zmq, psutil), never a test module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import zmq

from spear import bundles, protocol as P
from spear.cluster import free_port
from spear.mesh import context

__all__ = ["EXAMPLES", "ADD_WAT", "FAST_HB", "wait_for", "free_port", "spear_cli", "add_spec",
           "dealer", "request", "gone", "make_bundle"]

#: the repository's examples/ (wasm and process functions the tests deploy)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: examples/add.wat: its ``add`` export turns args [a, b] into b"a+b"
ADD_WAT = (EXAMPLES / "add.wat").read_bytes()
#: heartbeats fast enough that a lost node is noticed within about a second
FAST_HB = dict(heartbeat_interval=0.2, heartbeat_timeout=1.0, cleanup_interval=60.0)


def wait_for(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.05, *,
             tolerate: tuple[type[BaseException], ...] = ()) -> Any:
    """Poll ``pred()`` until it returns something truthy and return that.

    Fails (AssertionError naming ``what`` and the last value) once ``timeout``
    seconds pass without it: a bounded wait, not a timing check. Exceptions of
    the ``tolerate`` types count as "not yet" (and are reported as the last
    value); any other exception propagates at once.
    """
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except tolerate as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last={last!r}")


def spear_cli(*args: str, timeout: float = 20.0, input: str | bytes | None = None,
              text: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m spear ARGS`` to completion, ``input`` on its stdin; output
    captured (as text unless ``text=False``)."""
    return subprocess.run([sys.executable, "-m", "spear", *args], capture_output=True,
                          input=input, text=text, timeout=timeout)


def add_spec(name: str = "add", **kw) -> P.FunctionSpec:
    """The wasm ``add`` function of examples/add.wat under ``name``."""
    return P.FunctionSpec(name=name, runtime="wasm", handler="add", artifact=ADD_WAT, **kw)


def dealer(addr: str, ident: bytes | None = None) -> zmq.Socket:
    """A raw DEALER connected to ``addr`` (linger 0), with routing id ``ident`` if given.

    Close it with ``close(0)``.
    """
    s = context().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if ident:
        s.setsockopt(zmq.ROUTING_ID, ident)
    s.connect(addr)
    return s


def request(sock: zmq.Socket, msg_or_frames, timeout: float = 3.0):
    """Send a message (or a list of raw frames) and return the next decoded
    message, or None if nothing came within ``timeout`` seconds."""
    frames = msg_or_frames if isinstance(msg_or_frames, list) else P.encode(msg_or_frames)
    sock.send_multipart(frames)
    if not sock.poll(int(timeout * 1000)):
        return None
    return P.decode(sock.recv_multipart())[0]


def gone(pids, wait: float = 2.0) -> bool:
    """True once none of ``pids`` is alive, False if some still are after ``wait`` seconds.

    A zombie counts as dead unless it is a child of this process (the test must
    reap its own children).
    """
    end = time.monotonic() + wait
    while True:
        alive = []
        for pid in pids:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE or p.ppid() == os.getpid():
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > end:
            return not alive
        time.sleep(0.02)


def make_bundle(files: dict[str, str | bytes]) -> bytes:
    """A code bundle (what ``bundles.pack`` makes of a directory) holding ``files``
    (archive name -> text or bytes)."""
    return bundles.pack(None, {name: data.encode() if isinstance(data, str) else data
                               for name, data in files.items()})
