"""The ``local`` provider: Spearlet processes on this host, on loopback.

Each node gets a directory ``<workdir>/<name>/`` holding its data dir, its
log and ``node.json`` (pid, process start time, address): :meth:`list`
finds the nodes again after the autoscaler restarts, and the start time
keeps a recycled pid from being taken for one of ours.

``NodeType.options`` understood here: ``config`` (a TOML file passed to the
Spearlet with ``--config``, e.g. to set ``[spearlet] max_concurrency``) and
``labels`` (``k=v,k2=v2`` added to the node's own).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from ... import errors
from ...config import child_env
from .base import NodeHandle, NodeType

#: the label every node the autoscaler starts carries (``spear nodes`` shows it as ``owner``)
OWNER_LABEL = "spear.owner"
#: the label naming the node type it was started as
TYPE_LABEL = "spear.node-type"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int, started: float) -> bool:
    """Is ``pid`` still the process we started (same start time)?"""
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and abs(p.create_time() - started) < 1.0
    except psutil.Error:
        return False


class LocalProvider:
    """Starts Spearlets as child processes (own session) and stops them with SIGTERM, then SIGKILL."""

    name = "local"

    def __init__(self, *, sms: str, workdir: str | os.PathLike, stop_timeout: float = 15.0,
                 options: dict[str, str] | None = None) -> None:
        """``options``: accepted so every provider is built alike; the local
        provider reads its options per node type (``NodeType.options``)."""
        self.sms = sms
        self.workdir = Path(workdir)
        self.stop_timeout = stop_timeout
        #: processes started by this instance, reaped on destroy so none is left a zombie
        self._children: dict[int, subprocess.Popen] = {}

    async def create(self, node_type: NodeType, name: str) -> NodeHandle:
        """Start ``spear spearlet`` named ``name`` on a free loopback port."""
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        labels = f"{OWNER_LABEL}=autoscaler,{TYPE_LABEL}={node_type.name}"
        if node_type.options.get("labels"):
            labels += "," + node_type.options["labels"]
        addr = f"tcp://127.0.0.1:{_free_port()}"
        cmd = [sys.executable, "-P", "-m", "spear", "spearlet", "--sms", self.sms, "--name", name,
               "--listen", addr, "--data", str(home / "data"), "--labels", labels]
        if node_type.options.get("config"):
            cmd += ["--config", node_type.options["config"]]
        with open(home / "spearlet.log", "ab") as log:
            try:
                proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                        env=child_env(), start_new_session=True)
            except OSError as exc:
                raise errors.Unavailable(f"local provider: cannot start a spearlet: {exc}") from None
        started = psutil.Process(proc.pid).create_time()
        now = time.time()
        record = {"pid": proc.pid, "started": started, "address": addr, "node_type": node_type.name,
                  "created_at": now}
        (home / "node.json").write_text(json.dumps(record))
        self._children[proc.pid] = proc
        return NodeHandle(provider=self.name, node_type=node_type.name, ref=str(proc.pid),
                          name=name, created_at=now)

    async def destroy(self, handle: NodeHandle) -> None:
        """SIGTERM (the Spearlet drains and deregisters), SIGKILL after ``stop_timeout``."""
        home = self.workdir / handle.name
        record = self._record(home)
        if record is not None and _alive(record["pid"], record["started"]):
            pid = record["pid"]
            self._signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            while _alive(pid, record["started"]) and time.monotonic() < deadline:
                self._reap(pid)
                await asyncio.sleep(0.05)
            if _alive(pid, record["started"]):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._reap(pid, wait=True)
        shutil.rmtree(home, ignore_errors=True)

    async def list(self) -> list[NodeHandle]:
        """The nodes under ``workdir`` whose process still runs."""
        out = []
        for home in sorted(self.workdir.glob("*/")):
            record = self._record(home)
            if record is not None and _alive(record["pid"], record["started"]):
                out.append(NodeHandle(provider=self.name, node_type=record["node_type"],
                                      ref=str(record["pid"]), name=home.name,
                                      created_at=record["created_at"]))
        return out

    @staticmethod
    def _record(home: Path) -> dict | None:
        try:
            return json.loads((home / "node.json").read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _reap(self, pid: int, wait: bool = False) -> None:
        proc = self._children.get(pid)
        if proc is None:
            return
        try:
            proc.wait(5 if wait else 0)
        except subprocess.TimeoutExpired:
            return
        del self._children[pid]
