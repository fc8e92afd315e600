"""The harness's plumbing: progress on stderr, CPU meters, child processes, the event loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: the child programs the harness starts (real files, run with ``sys.executable``)
FLOOR_DIR = Path(__file__).resolve().parent.parent / "floor"
FUNCTIONS_DIR = Path(__file__).resolve().parent.parent / "functions"


def program(*argv: str) -> list[str]:
    """The argv that runs floor program ``argv[0]`` (``echo_server``, ``fib``, ...) with its arguments."""
    return [sys.executable, str(FLOOR_DIR / f"{argv[0]}.py"), *argv[1:]]


def run_async(coro):
    """Run a coroutine on uvloop (plain asyncio where uvloop is missing), as the daemons do."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        import asyncio

        return asyncio.run(coro)
    return uvloop.run(coro)


def stop_proc(p: subprocess.Popen, timeout: float = 3.0) -> None:
    """SIGTERM, then SIGKILL to its process group; close its stdout."""
    if p.poll() is not None:
        return
    try:
        p.terminate()
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            p.kill()
        p.wait(5)
    finally:
        if p.stdout is not None:
            p.stdout.close()


class Progress:
    """A rich progress bar on stderr (plain lines when rich is missing)."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = total
        self._p = None
        self._task = None
        self.done = 0
        if not enabled:
            return
        try:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RP, SpinnerColumn,
                                       TextColumn, TimeElapsedColumn)
        except ImportError:  # pragma: no cover
            return
        self._p = RP(SpinnerColumn(), TextColumn("[bold]{task.description:<46}"), BarColumn(),
                     MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True),
                     transient=False)

    def __enter__(self) -> "Progress":
        if self._p is not None:
            self._p.start()
            self._task = self._p.add_task("starting", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.update(self._task, description="done", completed=self.total)
            self._p.stop()

    def step(self, what: str) -> None:
        """Announce the next step (and count the previous one as done)."""
        if self._p is not None:
            self._p.update(self._task, description=what[:46], completed=self.done)
        else:
            print(f"[{self.done}/{self.total}] {what}", file=sys.stderr, flush=True)
        self.done += 1

    def log(self, text: str) -> None:
        """A line above the bar."""
        if self._p is not None:
            self._p.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)


class CpuMeter:
    """CPU seconds used by a set of processes over an interval (psutil)."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.procs = {}
        for name, pid in pids.items():
            try:
                self.procs[name] = psutil.Process(pid)
            except psutil.Error:
                pass
        self.t0: dict[str, float] = {}
        self.w0 = 0.0

    def _cpu(self, p) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except Exception:  # noqa: BLE001 - it may have exited
            return 0.0

    def __enter__(self) -> "CpuMeter":
        self.t0 = {n: self._cpu(p) for n, p in self.procs.items()}
        self.w0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.w0
        self.used = {n: self._cpu(p) - self.t0[n] for n, p in self.procs.items()}

    def summary(self, ops: int = 0) -> str:
        """``cpu sms 95% (40 µs/op), ...``: share of one core over the interval, CPU per operation."""
        def one(n: str, u: float) -> str:
            per = f" ({u / ops * 1e6:.0f} µs/op)" if ops and u > 0.005 else ""
            return f"{n} {u / self.wall * 100:.0f}%{per}"

        return "cpu " + ", ".join(one(n, u) for n, u in self.used.items())

    def as_json(self, ops: int = 0) -> dict:
        """The raw figures: wall time, CPU seconds and CPU per operation per process."""
        return {"wall": self.wall, "cpu_seconds": self.used, "ops": ops,
                "cpu_us_per_op": {n: u / ops * 1e6 for n, u in self.used.items()} if ops else {}}
