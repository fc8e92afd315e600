"""``spear bench`` (also ``python -m bench``): Spear's figures against a bare-pyzmq floor.

One run starts everything it needs on loopback (127.0.0.1, random free
ports), measures, prints a table and writes the same figures as JSON
(SPEC section 9, issue 5). Every figure that has a floor is a ratio to that
floor measured in the same run, because these machines are shared and noisy.

Sections (``--only a,b``; ``floor`` is added whenever a section needs it):

* ``floor``: bare pyzmq + msgspec, no Spear code. A 2-hop round trip (DEALER
  client <-> ROUTER echo server in another process), a 3-hop one (client ->
  ROUTER/ROUTER broker -> DEALER worker and back; broker and worker each in
  their own process, the broker a blocking ``zmq.Poller`` loop draining each
  socket with NOBLOCK and forwarding frames untouched), each as p50/p99 of
  sequential round trips and as pipelined round trips/s (a window of 1000;
  the client drains every waiting reply, then refills), plus a 1 MiB payload
  echo. The echo server and the worker decode each request with msgspec and
  encode a reply, frames are ``[version, msgpack body, payload?]`` like
  Spear's. The servers stay up for the whole run: floor and Spear trials
  alternate and the best of each counts, so a burst of noise from other
  tenants of the machine does not make one side look better.
* ``latency``: warm no-op invocations, direct to a Spearlet and through the
  SMS, for a wasm export, a WASI command, a pooled process worker, a Python
  handler (and a one-shot process, for scale), with the blocking ``Client``
  and with ``AsyncClient``; the better is reported. Also Spear's ping, and
  the wasm runtime's own time (``timings.run``) against a bare wasmtime-py
  call of the same export.
* ``throughput``: pipelined no-op invocations (wasm ``add``) with many in
  flight through ``AsyncClient``, through the SMS and direct; 1 MiB echoed
  by a Python handler through the SMS and direct.
* ``cold``: first invocation after a deploy with ``min_warm=0``, per runtime.
* ``scheduler`` / ``pool``: the compiled kernels against their pure-Python
  twins (``spear.fast``).
* ``rss``: idle RSS of the SMS and of a Spearlet, before any load.
* ``parallel``: a CPU-bound Python handler (``fib``) serially on one
  instance vs across ``os.cpu_count()`` instances; its floor is the same
  loop in bare processes (what the machine gives right now).
* ``docker``: one-shot and pooled container invocations, if a node offers
  the docker runtime.

Whenever the cluster starts, ``startup`` times it to the first result (ready,
then one wasm deploy and invoke through the SMS).

Spear's side runs with the spearlet's ``max_concurrency`` raised to 4096
(default 64), or a window of hundreds in flight would be refused; every other
setting is the default. ``--profile`` adds an unmeasured pass of the SMS throughput load with
py-spy attached to the SMS and the Spearlet and prints where their time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

SECTIONS = ("floor", "latency", "throughput", "cold", "scheduler", "pool", "rss", "parallel", "docker")
#: sections that need the embedded cluster
CLUSTER_SECTIONS = {"latency", "throughput", "cold", "rss", "parallel", "docker"}
#: sections whose figures are ratios to the floor
FLOOR_SECTIONS = {"latency", "throughput"}

MiB = 1024 * 1024


# ====================================================================== plan


@dataclass
class Plan:
    """How much to measure (``--quick`` shrinks every count)."""

    quick: bool
    floor_lat_n: int  # sequential round trips per floor latency pass
    floor_rate_n: int  # round trips per pipelined floor trial
    floor_window: int
    mib_n: int
    lat_n: int
    lat_warm: int
    oneshot_n: int
    rate_n: int  # invocations per pipelined Spear trial
    rate_trials: int  # interleaved floor/Spear trials; the best of each counts
    window: int
    cold_reps: int
    kernel_repeat: int
    fib_arg: int
    fib_n: int
    docker_oneshot_n: int
    docker_pooled_n: int
    spearlets: int = 1
    refloor: bool = True

    @classmethod
    def make(cls, quick: bool) -> "Plan":
        cpus = os.cpu_count() or 1
        if quick:
            return cls(quick=True, floor_lat_n=1000, floor_rate_n=10_000, floor_window=1000, mib_n=30,
                       lat_n=300, lat_warm=30, oneshot_n=20, rate_n=4000, rate_trials=2, window=512,
                       cold_reps=1, kernel_repeat=3, fib_arg=27, fib_n=6 * cpus,
                       docker_oneshot_n=2, docker_pooled_n=5, refloor=False)
        return cls(quick=False, floor_lat_n=5000, floor_rate_n=20_000, floor_window=1000, mib_n=100,
                   lat_n=1000, lat_warm=100, oneshot_n=50, rate_n=10_000, rate_trials=3, window=512,
                   cold_reps=3, kernel_repeat=7, fib_arg=27, fib_n=10 * cpus,
                   docker_oneshot_n=5, docker_pooled_n=20, refloor=True)


# ====================================================================== figures


@dataclass
class Figure:
    """One row of the table (and of the JSON)."""

    section: str
    key: str
    figure: str
    value: float | None
    unit: str
    floor: float | None = None
    floor_key: str = ""
    target: str = ""
    passed: bool | None = None
    note: str = ""
    check: tuple[str, float] | None = None

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.floor:
            return None
        return self.value / self.floor

    def as_json(self) -> dict:
        return {"section": self.section, "key": self.key, "figure": self.figure,
                "value": self.value, "unit": self.unit, "floor": self.floor,
                "floor_key": self.floor_key, "ratio": self.ratio, "target": self.target,
                "pass": self.passed, "note": self.note}


#: floor figures where lower is better (latencies); every other floor is a rate
_LOWER_IS_BETTER = (".p50", ".p99")


class Results:
    """Figures, raw samples and skip reasons of one run.

    Floors are collected as samples (several passes or trials) and the best
    one counts: the lowest latency, the highest rate. Ratios and pass/fail
    are resolved by :meth:`finalize` once every sample is in.
    """

    def __init__(self) -> None:
        self.figures: list[Figure] = []
        self.raw: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        self.floor_samples: dict[str, list[float]] = {}
        self.floor_notes: dict[str, str] = {}
        self.floor: dict[str, float] = {}

    def floor_sample(self, key: str, value: float, note: str = "") -> None:
        self.floor_samples.setdefault(key, []).append(value)
        best = self.best_floor(key)
        if note and value == best:
            self.floor_notes[key] = note

    def best_floor(self, key: str) -> float | None:
        xs = self.floor_samples.get(key)
        if not xs:
            return None
        return min(xs) if key.endswith(_LOWER_IS_BETTER) else max(xs)

    def add(self, section: str, key: str, figure: str, value: float | None, unit: str, *,
            floor_key: str = "", target: tuple[str, float] | None = None, note: str = "") -> Figure:
        """Record a figure; ``target`` is ``(kind, bound)`` with kind one of
        ``ratio<=``, ``ratio>=``, ``<``, ``<=``, ``>=``."""
        f = Figure(section, key, figure, value, unit, floor_key=floor_key, note=note, check=target)
        self.figures.append(f)
        return f

    def finalize(self) -> None:
        """Best floors, then every figure's ratio and pass/fail."""
        self.floor = {k: self.best_floor(k) for k in self.floor_samples}
        for f in self.figures:
            if f.floor_key:
                f.floor = self.floor.get(f.floor_key)
            if f.check is not None:
                f.target, f.passed = _check(f.check[0], f.check[1], f, f.unit)


def _check(kind: str, bound: float, f: Figure, unit: str) -> tuple[str, bool | None]:
    """The target's text and whether the figure meets it (None: cannot tell)."""
    if kind == "ratio<=":
        r = f.ratio
        return f"<= {bound:g}x floor", (None if r is None else r <= bound)
    if kind == "ratio>=":
        r = f.ratio
        return f">= {bound:g}x floor", (None if r is None else r >= bound)
    if f.value is None:
        return f"{kind} {_fmt(bound, unit)}", None
    if kind == "<":
        return f"< {_fmt(bound, unit)}", f.value < bound
    if kind == "<=":
        return f"<= {_fmt(bound, unit)}", f.value <= bound
    if kind == ">=":
        return f">= {_fmt(bound, unit)}", f.value >= bound
    raise ValueError(kind)


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "/s":
        return f"{v:,.0f}/s"
    if unit == "x":
        return f"{v:,.1f}x"
    if unit == "%":
        return f"{v * 100:.1f}%"
    if unit == "MB":
        return f"{v:.1f} MB"
    if unit == "ns":
        return f"{v:,.0f} ns"
    if unit in ("ms", "us", "s"):
        shown = "µs" if unit == "us" else unit
        if v >= 100:
            return f"{v:,.0f} {shown}"
        if v >= 10:
            return f"{v:.1f} {shown}"
        return f"{v:.3g} {shown}" if v >= 1 else f"{v:.3f} {shown}"
    return f"{v:g} {unit}"


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(xs)
    k = min(len(s) - 1, max(0, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def _ms(xs: list[float]) -> dict:
    """p50/p99/mean/min of seconds, in ms."""
    return {"n": len(xs), "p50": pct(xs, 50) * 1e3, "p99": pct(xs, 99) * 1e3,
            "mean": statistics.fmean(xs) * 1e3, "min": min(xs) * 1e3}


# ====================================================================== progress


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
        if self._p is not None:
            self._p.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)


# ====================================================================== the floor

#: Source of the floor's server processes: pyzmq + msgspec only, no Spear code.
#: argv: role (echo | broker | worker) [backend address for a worker].
FLOOR_SRC = r'''
import sys
import msgspec
import zmq

PROTO = b"FLOOR/1"

class Call(msgspec.Struct, tag=True, omit_defaults=True):
    id: int
    function: str
    args: list[int] = []

class Reply(msgspec.Struct, tag=True, omit_defaults=True):
    id: int
    status: str

dec = msgspec.msgpack.Decoder(Call)
enc = msgspec.msgpack.Encoder()

def sock(ctx, kind):
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 500000)
    s.setsockopt(zmq.RCVHWM, 500000)
    return s

def answer(f, at):
    # f[at] = version, f[at+1] = body, f[at+2] = payload (forwarded as is)
    if f[at] != PROTO:
        return None
    msg = dec.decode(f[at + 1])
    out = f[:at]
    out.append(PROTO)
    out.append(enc.encode(Reply(id=msg.id, status="succeeded")))
    out.extend(f[at + 2:])
    return out

def echo():
    ctx = zmq.Context()
    s = sock(ctx, zmq.ROUTER)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    print(port, flush=True)
    recv, send = s.recv_multipart, s.send_multipart
    while True:
        out = answer(recv(), 1)
        if out is not None:
            send(out)

def worker(addr):
    ctx = zmq.Context()
    s = sock(ctx, zmq.DEALER)
    s.connect(addr)
    s.send(b"READY")
    recv, send = s.recv_multipart, s.send_multipart
    while True:
        out = answer(recv(), 1)  # [client id, version, body, payload?]
        if out is not None:
            send(out)

def broker():
    ctx = zmq.Context()
    front = sock(ctx, zmq.ROUTER)
    back = sock(ctx, zmq.ROUTER)
    fp = front.bind_to_random_port("tcp://127.0.0.1")
    bp = back.bind_to_random_port("tcp://127.0.0.1")
    print(fp, bp, flush=True)
    wid = back.recv_multipart()[0]  # the worker's READY
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    frecv, fsend, brecv, bsend = front.recv_multipart, front.send_multipart, back.recv_multipart, back.send_multipart
    NOBLOCK, Again = zmq.NOBLOCK, zmq.Again
    while True:
        poller.poll()
        while True:  # clients -> worker
            try:
                f = frecv(NOBLOCK)
            except Again:
                break
            f.insert(0, wid)
            bsend(f)
        while True:  # worker -> clients
            try:
                f = brecv(NOBLOCK)
            except Again:
                break
            fsend(f[1:])

role = sys.argv[1]
if role == "echo":
    echo()
elif role == "broker":
    broker()
elif role == "worker":
    worker(sys.argv[2])
'''


class Floor:
    """The bare pyzmq servers (separate processes) and the in-process client."""

    PROTO = b"FLOOR/1"

    def __init__(self) -> None:
        import msgspec
        import zmq

        self.zmq = zmq
        self.procs: list[subprocess.Popen] = []
        self.ctx = zmq.Context()

        class Call(msgspec.Struct, tag=True, omit_defaults=True):
            id: int
            function: str
            args: list[int] = []

        class Reply(msgspec.Struct, tag=True, omit_defaults=True):
            id: int
            status: str

        self.Call = Call
        self.enc = msgspec.msgpack.Encoder()
        self.dec = msgspec.msgpack.Decoder(Reply)
        self.echo_addr = ""
        self.broker_addr = ""
        self.pids: dict[str, int] = {}

    def _spawn(self, *args: str) -> tuple[subprocess.Popen, list[str]]:
        p = subprocess.Popen([sys.executable, "-c", FLOOR_SRC, *args], stdout=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        line = p.stdout.readline().decode().split() if args[0] != "worker" else []
        if args[0] != "worker" and not line:
            raise RuntimeError(f"floor {args[0]} process did not start (exit {p.poll()})")
        return p, line

    def start(self) -> None:
        p, (port,) = self._spawn("echo")
        self.pids["echo"] = p.pid
        self.echo_addr = f"tcp://127.0.0.1:{port}"
        p, (fport, bport) = self._spawn("broker")
        self.pids["broker"] = p.pid
        self.broker_addr = f"tcp://127.0.0.1:{fport}"
        w, _ = self._spawn("worker", f"tcp://127.0.0.1:{bport}")
        self.pids["worker"] = w.pid

    def stop(self) -> None:
        for p in self.procs:
            _stop_proc(p)
        self.procs.clear()
        self.ctx.destroy(linger=0)

    def _client(self, addr: str):
        zmq = self.zmq
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 500_000)
        s.setsockopt(zmq.RCVHWM, 500_000)
        s.connect(addr)
        return s

    def latency(self, addr: str, n: int, payload: bytes | None = None, warm: int = 100) -> list[float]:
        """Sequential round trips; seconds each."""
        s = self._client(addr)
        Call, enc, dec, PROTO = self.Call, self.enc.encode, self.dec.decode, self.PROTO
        send, recv, perf = s.send_multipart, s.recv_multipart, time.perf_counter
        out = []
        try:
            for i in range(warm + n):
                frames = [PROTO, enc(Call(id=i, function="noop", args=[1, 2]))]
                if payload is not None:
                    frames.append(payload)
                t0 = perf()
                send(frames, copy=payload is None)
                f = recv(copy=payload is None)
                r = dec(f[1] if payload is None else f[1].buffer)
                dt = perf() - t0
                if r.id != i or (payload is not None and len(f[2]) != len(payload)):
                    raise RuntimeError("floor: wrong reply")
                if i >= warm:
                    out.append(dt)
        finally:
            s.close(linger=0)
        return out

    def pipelined(self, addr: str, n: int, window: int) -> float:
        """Round trips per second with ``window`` requests in flight."""
        s = self._client(addr)
        Call, enc, dec, PROTO = self.Call, self.enc.encode, self.dec.decode, self.PROTO
        send, recv = s.send_multipart, s.recv_multipart
        try:
            for i in range(200):  # warm the path
                send([PROTO, enc(Call(id=i, function="noop", args=[1, 2]))])
            for i in range(200):
                recv()
            sent = got = 0
            t0 = time.perf_counter()
            while sent < min(window, n):
                send([PROTO, enc(Call(id=sent, function="noop", args=[1, 2]))])
                sent += 1
            # drain every reply waiting, then refill the window (the efficient client)
            poll, NOBLOCK, Again = s.poll, self.zmq.NOBLOCK, self.zmq.Again
            while got < n:
                poll()
                k = 0
                while True:
                    try:
                        f = recv(NOBLOCK)
                    except Again:
                        break
                    dec(f[1])
                    k += 1
                got += k
                for _ in range(min(k, n - sent)):
                    send([PROTO, enc(Call(id=sent, function="noop", args=[1, 2]))])
                    sent += 1
            return n / (time.perf_counter() - t0)
        finally:
            s.close(linger=0)


def _stop_proc(p: subprocess.Popen, timeout: float = 3.0) -> None:
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
        wall = time.perf_counter() - self.w0
        self.wall = wall
        self.used = {n: self._cpu(p) - self.t0[n] for n, p in self.procs.items()}

    def summary(self, ops: int = 0) -> str:
        """``cpu sms 95% (40 µs/op), ...``: share of one core over the interval, CPU per operation."""
        def one(n: str, u: float) -> str:
            per = f" ({u / ops * 1e6:.0f} µs/op)" if ops and u > 0.005 else ""
            return f"{n} {u / self.wall * 100:.0f}%{per}"

        return "cpu " + ", ".join(one(n, u) for n, u in self.used.items())

    def as_json(self, ops: int = 0) -> dict:
        return {"wall": self.wall, "cpu_seconds": self.used, "ops": ops,
                "cpu_us_per_op": {n: u / ops * 1e6 for n, u in self.used.items()} if ops else {}}


def floor_latency_pass(fl: Floor, res: Results, plan: Plan, prog: Progress, tag: str = "") -> None:
    """Sequential round trips (small and 1 MiB) through both floors."""
    raw = res.raw.setdefault("floor", {}).setdefault("latency_passes", [])
    one: dict[str, Any] = {}
    prog.step(f"floor{tag}: 2-hop and 3-hop round trips")
    for hop, addr in (("2hop", fl.echo_addr), ("3hop", fl.broker_addr)):
        m = _ms(fl.latency(addr, plan.floor_lat_n))
        one[hop] = m
        res.floor_sample(f"{hop}.p50", m["p50"])
        res.floor_sample(f"{hop}.p99", m["p99"])
    prog.step(f"floor{tag}: 1 MiB echo")
    blob = os.urandom(MiB)
    for hop, addr in (("2hop", fl.echo_addr), ("3hop", fl.broker_addr)):
        m = _ms(fl.latency(addr, plan.mib_n, blob, warm=5))
        one[f"{hop}_1mib"] = m
        res.floor_sample(f"{hop}.1mib.p50", m["p50"])
    m = _ms(pipe_echo_floor(blob, plan.mib_n))
    one["pipe_1mib"] = m
    res.floor_sample("pipe.1mib.p50", m["p50"])
    raw.append(one)


#: A bare child that echoes length-prefixed frames from stdin to stdout: the
#: cost of moving data through a worker's pipes, without Spear.
PIPE_ECHO_SRC = r'''
import os, struct
r, w = 0, 1
def read_exactly(n):
    buf = bytearray(n); mv = memoryview(buf); got = 0
    while got < n:
        k = os.readv(r, [mv[got:]])
        if not k:
            raise SystemExit(0)
        got += k
    return buf
while True:
    (n,) = struct.unpack(">I", read_exactly(4))
    data = bytes(read_exactly(n))
    out = memoryview(struct.pack(">I", n) + data)
    while out:
        out = out[os.write(w, out):]
'''


def pipe_echo_floor(blob: bytes, n: int) -> list[float]:
    """Round trips of ``blob`` through a bare child's stdin/stdout (pipes sized as Spear's)."""
    from .runtimes.process import grow_pipe as _grow_pipe

    p = subprocess.Popen([sys.executable, "-c", PIPE_ECHO_SRC], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, bufsize=0)
    try:
        for f in (p.stdin, p.stdout):
            _grow_pipe(f.fileno())
        frame = struct.pack(">I", len(blob)) + blob
        ts = []
        for i in range(n + 3):
            t0 = time.perf_counter()
            out = memoryview(frame)
            while out:
                out = out[os.write(p.stdin.fileno(), out):]
            got = bytearray()
            while len(got) < len(frame):
                chunk = os.read(p.stdout.fileno(), 1 << 18)
                if not chunk:
                    raise RuntimeError("pipe echo child exited")
                got += chunk
            if i >= 3:
                ts.append(time.perf_counter() - t0)
        return ts
    finally:
        p.stdin.close()
        p.wait(5)
        p.stdout.close()


def floor_rate_trial(fl: Floor, res: Results, plan: Plan, hop: str) -> float:
    """One pipelined trial through the 2-hop or the 3-hop floor."""
    me = os.getpid()
    if hop == "2hop":
        pids, addr = {"client": me, "echo": fl.pids["echo"]}, fl.echo_addr
    else:
        pids, addr = {"client": me, "broker": fl.pids["broker"], "worker": fl.pids["worker"]}, fl.broker_addr
    with CpuMeter(pids) as m:
        rate = fl.pipelined(addr, plan.floor_rate_n, plan.floor_window)
    res.raw.setdefault("floor", {}).setdefault(f"{hop}_rate_trials", []).append(
        {"rate": rate, "cpu": m.as_json(plan.floor_rate_n)})
    res.floor_sample(f"{hop}.rate", rate, m.summary(plan.floor_rate_n))
    return rate


def floor_figures(res: Results) -> None:
    """The floor rows, from the best sample of each figure."""
    def note(key: str) -> str:
        n = len(res.floor_samples.get(key, ()))
        extra = res.floor_notes.get(key, "")
        return "; ".join(x for x in (f"best of {n}" if n > 1 else "", extra) if x)

    rows = [
        ("2hop.p50", "floor: 2-hop round trip p50 (DEALER<->ROUTER echo)", "ms"),
        ("2hop.p99", "floor: 2-hop round trip p99", "ms"),
        ("3hop.p50", "floor: 3-hop round trip p50 (client->broker->worker)", "ms"),
        ("3hop.p99", "floor: 3-hop round trip p99", "ms"),
        ("2hop.rate", "floor: 2-hop pipelined round trips", "/s"),
        ("3hop.rate", "floor: 3-hop pipelined round trips (broker)", "/s"),
        ("2hop.1mib.p50", "floor: 1 MiB echo p50, 2-hop", "ms"),
        ("3hop.1mib.p50", "floor: 1 MiB echo p50, 3-hop broker", "ms"),
        ("pipe.1mib.p50", "floor: 1 MiB echo p50 through a bare child's pipes (a worker's hop)", "ms"),
        ("parallel.efficiency", "floor: bare processes on all cores: parallel efficiency", "%"),
        ("wasmtime.call", "floor: bare wasmtime-py call of the add export", "us"),
    ]
    for key, label, unit in reversed(rows):
        v = res.best_floor(key)
        if v is not None:
            res.figures.insert(0, Figure("floor", f"floor.{key}", label, v, unit, note=note(key)))


#: A CPU-bound child for the bare parallel-efficiency floor: the same naive
#: fib as examples/handlers.py, started, warmed, then released by a line on stdin.
FIB_SRC = r'''
import sys, time
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
k, arg = int(sys.argv[1]), int(sys.argv[2])
fib(arg)
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
for _ in range(k):
    fib(arg)
sys.stdout.write("done\n"); sys.stdout.flush()
'''


def bare_parallel(arg: int, n: int, workers: int) -> tuple[float, float]:
    """(serial seconds, parallel seconds) of ``n`` fib(arg) in bare processes."""

    def run(k: int, count: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", FIB_SRC, str(k), str(arg)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, start_new_session=True) for _ in range(count)]
        try:
            for p in procs:
                if p.stdout.readline().strip() != b"ready":
                    raise RuntimeError("fib child did not start")
            t0 = time.perf_counter()
            for p in procs:
                p.stdin.write(b"go\n")
                p.stdin.flush()
            for p in procs:
                p.stdout.readline()
            return time.perf_counter() - t0
        finally:
            for p in procs:
                p.stdin.close()
                _stop_proc(p)

    per = max(1, n // workers)
    return run(per * workers, 1), run(per, workers)


# ====================================================================== kernels


def _best_time(fn: Callable[[], Any], repeat: int, min_time: float = 0.05) -> float:
    """Seconds per call of ``fn``: autoranged loops, best of ``repeat``."""
    import timeit

    t = timeit.Timer(fn)
    number, elapsed = t.autorange()
    if elapsed < min_time:
        number = max(number, int(number * min_time / max(elapsed, 1e-9)))
    return min(t.repeat(repeat=repeat, number=number)) / number


def _cluster_arrays(n: int, seed: int = 42) -> tuple:
    """A plausible cluster: mixed node sizes, partly loaded, 5% warm, 90% eligible
    (shared with bench/test_kernels.py)."""
    import random
    from array import array

    rnd = random.Random(seed)
    cap_cpu = [float(rnd.choice((2, 4, 8, 16, 32))) for _ in range(n)]
    cap_mem = [c * 4096.0 for c in cap_cpu]
    return (
        array("d", [rnd.uniform(0.0, c) for c in cap_cpu]),
        array("d", [rnd.uniform(0.0, m) for m in cap_mem]),
        array("d", cap_cpu),
        array("d", cap_mem),
        array("d", [rnd.random() for _ in range(n)]),
        array("B", [rnd.random() < 0.9 for _ in range(n)]),
        array("B", [rnd.random() < 0.05 for _ in range(n)]),
        array("d", [rnd.choice((0.0, 0.0, 0.0, 0.25)) for _ in range(n)]),
    )


def measure_scheduler(res: Results, plan: Plan, prog: Progress) -> None:
    import spear.fast as fast

    comp, twin = fast.compiled_scheduler, fast.py_scheduler
    raw = res.raw.setdefault("scheduler", {})
    for n in (100, 1_000, 10_000):
        prog.step(f"scheduler: one decision over {n:,} nodes")
        arrays = _cluster_arrays(n)
        t_py = _best_time(lambda: twin.pick_node(*arrays, 1.0, 2048.0), plan.kernel_repeat) * 1e6
        t_c = None
        if comp is not None:
            assert comp.pick_node(*arrays, 1.0, 2048.0) == twin.pick_node(*arrays, 1.0, 2048.0)
            t_c = _best_time(lambda: comp.pick_node(*arrays, 1.0, 2048.0), plan.kernel_repeat) * 1e6
        raw[n] = {"compiled_us": t_c, "twin_us": t_py}
        big = n == 10_000
        note = "" if comp is not None else "compiled kernel not loaded"
        res.add("scheduler", f"sched.{n}.compiled", f"scheduler: decision over {n:,} nodes, compiled",
                t_c, "us", target=("<", 50.0) if big else None, note=note)
        res.add("scheduler", f"sched.{n}.twin", f"scheduler: decision over {n:,} nodes, Python twin",
                t_py, "us")
        res.add("scheduler", f"sched.{n}.speedup", f"scheduler: compiled speedup at {n:,} nodes",
                (t_py / t_c) if t_c else None, "x", target=(">=", 20.0) if big else None)


def measure_pool(res: Results, plan: Plan, prog: Progress) -> None:
    import spear.fast as fast

    prog.step("pool: acquire+release pairs")
    pairs = 1000
    out = {}
    for kind, mod in (("compiled", fast.compiled_pool), ("twin", fast.py_pool)):
        if mod is None:
            out[kind] = None
            continue
        pool = mod.SlotPool(16)
        for _ in range(4):
            pool.release(pool.reserve(), 0.0)
        acquire, release = pool.acquire, pool.release

        def loop():
            for _ in range(pairs):
                release(acquire(), 1.0)

        out[kind] = _best_time(loop, plan.kernel_repeat) / pairs * 1e9
    res.raw["pool"] = out
    res.add("pool", "pool.compiled", "pool: acquire+release pair, compiled", out["compiled"], "ns",
            note="" if out["compiled"] is not None else "compiled kernel not loaded")
    res.add("pool", "pool.twin", "pool: acquire+release pair, Python twin", out["twin"], "ns")
    res.add("pool", "pool.speedup", "pool: compiled speedup",
            out["twin"] / out["compiled"] if out["compiled"] else None, "x",
            note="loop of 1000 pairs per call; includes the Python loop")


# ====================================================================== cluster side

#: A minimal pooled process worker (docs/worker-protocol.md) that does nothing.
NOOP_WORKER_SRC = r'''
import os, struct, sys
r = os.fdopen(3, "rb", buffering=1 << 16)
U32 = struct.Struct(">I")
REPLY = struct.Struct(">IB")
os.write(4, REPLY.pack(1 + 5, 0) + b"noop2")
while True:
    head = r.read(4)
    if len(head) < 4:
        break
    body = r.read(U32.unpack(head)[0])
    os.write(4, REPLY.pack(1, 0))
'''


def _examples() -> Path:
    from .demo import find_examples

    return find_examples(os.environ.get("SPEAR_EXAMPLES"))


def _specs(ex: Path, cpus: int, fib_arg: int = 25) -> dict:
    """name -> (spec, input, args) of every function the bench deploys."""
    from . import protocol as P

    add = (ex / "add.wat").read_bytes()
    hello = (ex / "hello.wat").read_bytes()
    warm1 = P.PoolSettings(min_warm=1)
    hd = str(ex)
    return {
        "b-add": (P.FunctionSpec(name="b-add", runtime="wasm", artifact=add, handler="add", pool=warm1),
                  b"", [1, 2]),
        "b-hello": (P.FunctionSpec(name="b-hello", runtime="wasm", artifact=hello, pool=warm1), b"", []),
        "b-worker": (P.FunctionSpec(name="b-worker", runtime="process", mode="pooled",
                                    command=[sys.executable, "-c", NOOP_WORKER_SRC], pool=warm1), b"", []),
        "b-noop": (P.FunctionSpec(name="b-noop", runtime="process", handler="handlers:noop", workdir=hd,
                                  pool=warm1), b"", []),
        "b-echo": (P.FunctionSpec(name="b-echo", runtime="process", handler="handlers:echo", workdir=hd,
                                  pool=warm1), b"", []),
        "b-oneshot": (P.FunctionSpec(name="b-oneshot", runtime="process", command=["cat"]), b"", []),
        "b-fib": (P.FunctionSpec(name="b-fib", runtime="process", handler="handlers:fib", workdir=hd,
                                 pool=P.PoolSettings(min_warm=cpus, max=cpus)), str(fib_arg).encode(), []),
    }


#: the latency rows: function, label, SPEC target applies
LATENCY_FUNCS = [
    ("b-add", "wasm export (add.wat add)", True),
    ("b-hello", "WASI command (hello.wat)", True),
    ("b-worker", "pooled process worker (no-op)", True),
    ("b-noop", "Python handler (handlers:noop)", True),
    ("b-oneshot", "one-shot process (cat)", False),
]


class Bench:
    """Owns the cluster, the clients and the results of one run."""

    def __init__(self, plan: Plan, sections: list[str], prog: Progress, *, profile: str | None,
                 keep: bool, data: str | None) -> None:
        self.plan = plan
        self.sections = sections
        self.prog = prog
        self.res = Results()
        self.profile = profile
        self.keep = keep
        self.data_arg = data
        self.cluster = None
        self.node = ""
        self.sms = ""
        self.ex: Path | None = None
        self.specs: dict = {}
        self.deployed_sms: set[str] = set()
        self.deployed_direct: set[str] = set()
        self.cpus = os.cpu_count() or 1
        self.runtimes: list[str] = []
        self.unavailable: dict[str, str] = {}
        self.floor: Floor | None = None

    # ------------------------------------------------------------ helpers

    def client(self, timeout: float = 60.0):
        from .client import Client

        return Client(self.sms, timeout=timeout)

    def run_async(self, coro):
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            return asyncio.run(coro)
        return uvloop.run(coro)

    def ensure(self, c, name: str, *, sms: bool, direct: bool) -> None:
        """Deploy ``name`` (through the SMS and/or directly) and warm it."""
        spec, data, args = self.specs[name]
        if sms and name not in self.deployed_sms:
            c.deploy(spec)
            self.deployed_sms.add(name)
            # the node fetches it on the first dispatch; warm that path now
            for _ in range(3):
                c.invoke(name, data, args=args).raise_for_status()
        if direct and name not in self.deployed_direct:
            have = {f.name for f in c.functions(node=self.node)}
            if name not in have:
                c.deploy(spec, node=self.node)
            self.deployed_direct.add(name)

    # ------------------------------------------------------------ cluster

    def start_cluster(self) -> None:
        from .cluster import Cluster

        self.ex = _examples()
        self.specs = _specs(self.ex, self.cpus, self.plan.fib_arg)
        base = Path(self.data_arg) if self.data_arg else Path(tempfile.mkdtemp(prefix="spear-bench-"))
        self.data = base
        cfg = base / "bench.toml"
        base.mkdir(parents=True, exist_ok=True)
        # the default per-node limit (64) would refuse a window of hundreds in flight
        # the bench's pooled worker is `sys.executable`, which may sit where the
        # sandbox user cannot reach (pyenv under /root): run functions as ourselves
        cfg.write_text(f"[spearlet]\nmax_concurrency = {max(4096, self.plan.window * 4)}\n"
                       f"[runtimes.process]\nuser = \"\"\n")
        self.prog.step(f"cluster: SMS + {self.plan.spearlets} spearlet(s)")
        t0 = time.perf_counter()
        self.cluster = Cluster(base / "cluster", spearlets=self.plan.spearlets, store=os.environ.get("SPEAR_BENCH_STORE", "leveldb"),
                               config=str(cfg), log_level="warning",
                               host_roots=[str(self.ex)])  # the handlers' workdir
        self.cluster.start(wait=60)
        t_ready = time.perf_counter() - t0
        self.sms = self.cluster.sms_addr
        self.node = self.cluster.spearlet_addrs[0]
        with self.client() as c:
            info = [n for n in c.nodes() if n.address == self.node] or c.nodes()
            self.runtimes = list(info[0].runtimes)
            self.unavailable = dict(info[0].unavailable)
        self.res.raw["cluster"] = {"data": str(base), "sms": self.sms, "spearlets": self.cluster.spearlet_addrs,
                                   "runtimes": self.runtimes, "unavailable": self.unavailable,
                                   "ready_s": t_ready}
        self.t_ready = t_ready

    def first_result(self) -> None:
        """``spear up`` to first result: ready time + deploy + first invoke through the SMS."""
        from . import protocol as P

        spec = P.FunctionSpec(name="b-first", runtime="wasm", artifact=(self.ex / "add.wat").read_bytes(),
                              handler="add")
        with self.client() as c:
            t0 = time.perf_counter()
            c.deploy(spec)
            r = c.invoke("b-first", args=[1, 2])
            t1 = time.perf_counter() - t0
        r.raise_for_status()
        self.res.raw["cluster"]["deploy_first_invoke_s"] = t1
        self.res.add("startup", "startup.first_result",
                     f"cluster start -> first result (SMS + {self.plan.spearlets} spearlet)",
                     self.t_ready + t1, "s", target=("<", 0.5),
                     note=f"ready {self.t_ready:.2f}s + deploy & first invoke {t1 * 1e3:.0f} ms")

    def stop_cluster(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        if not self.keep and not self.data_arg and getattr(self, "data", None):
            shutil.rmtree(self.data, ignore_errors=True)

    def pids(self) -> dict[str, int]:
        out = {"client": os.getpid()}
        if self.cluster is not None:
            out["sms"] = self.cluster.sms.pid
            for i, p in enumerate(self.cluster.spearlets):
                out["spearlet" if i == 0 else f"spearlet{i + 1}"] = p.pid
        return out

    # ------------------------------------------------------------ rss

    def measure_rss(self, label: str = "idle") -> dict:
        import psutil

        out = {}
        for name, pid in self.pids().items():
            if name == "client":
                continue
            try:
                out[name] = psutil.Process(pid).memory_info().rss / 1e6
            except psutil.Error:
                out[name] = None
        self.res.raw.setdefault("rss_mb", {})[label] = out
        return out

    def section_rss(self) -> None:
        self.prog.step("rss: idle SMS and spearlet")
        time.sleep(0.5 if self.plan.quick else 1.5)
        rss = self.measure_rss("idle")
        self.res.add("rss", "rss.sms", "idle RSS of the SMS", rss.get("sms"), "MB", target=("<", 80.0))
        self.res.add("rss", "rss.spearlet", "idle RSS of a spearlet", rss.get("spearlet"), "MB",
                     target=("<", 80.0))

    # ------------------------------------------------------------ latency

    def _lat_blocking(self, c, name: str, node: str | None, n: int, warm: int) -> dict:
        spec, data, args = self.specs[name]
        for _ in range(warm):
            c.invoke(name, data, args=args, node=node).raise_for_status()
        ts, runs, totals = [], [], []
        perf = time.perf_counter
        invoke = c.invoke
        for _ in range(n):
            t0 = perf()
            r = invoke(name, data, args=args, node=node)
            ts.append(perf() - t0)
            if not r.ok:
                r.raise_for_status()
            runs.append(r.info.timings.run)
            totals.append(r.info.timings.total)
        out = _ms(ts)
        out["run_p50"] = pct(runs, 50) * 1e3
        out["node_total_p50"] = pct(totals, 50) * 1e3
        return out

    async def _lat_async(self, pairs: list[tuple[str, str | None, int, int]]) -> dict:
        from .client import AsyncClient

        out = {}
        async with AsyncClient(self.sms, timeout=60) as c:
            perf = time.perf_counter
            for name, node, n, warm in pairs:
                spec, data, args = self.specs[name]
                for _ in range(warm):
                    (await c.invoke(name, data, args=args, node=node)).raise_for_status()
                ts = []
                for _ in range(n):
                    t0 = perf()
                    r = await c.invoke(name, data, args=args, node=node)
                    ts.append(perf() - t0)
                    if not r.ok:
                        r.raise_for_status()
                out[(name, node)] = _ms(ts)
        return out

    def section_latency(self) -> None:
        plan = self.plan
        raw = self.res.raw.setdefault("latency", {})
        pairs = []
        with self.client() as c:
            self.prog.step("latency: deploy functions")
            for name, _, _ in LATENCY_FUNCS:
                self.ensure(c, name, sms=True, direct=True)
            # Spear's own request path without an execution
            self.prog.step("latency: ping SMS and spearlet")
            for label, node in (("sms", None), ("direct", self.node)):
                for _ in range(50):
                    c.ping(node=node)
                ts = []
                for _ in range(plan.lat_n):
                    t0 = time.perf_counter()
                    c.ping(node=node)
                    ts.append(time.perf_counter() - t0)
                raw[f"ping.{label}"] = _ms(ts)
            for name, label, _ in LATENCY_FUNCS:
                n = plan.oneshot_n if name == "b-oneshot" else plan.lat_n
                for path, node in (("direct", self.node), ("sms", None)):
                    self.prog.step(f"latency: {label[:22]}, {path}")
                    raw[f"{name}.{path}.blocking"] = self._lat_blocking(c, name, node, n, plan.lat_warm if n > 50 else 5)
                    pairs.append((name, node, n, plan.lat_warm if n > 50 else 5))
        self.prog.step("latency: the same with AsyncClient")
        amap = self.run_async(self._lat_async(pairs))
        for (name, node), v in amap.items():
            raw[f"{name}.{'direct' if node else 'sms'}.async"] = v

        fl2, fl3 = "2hop", "3hop"
        self.res.add("latency", "ping.direct.p50", "Spear ping of a spearlet p50 (no execution)",
                     raw["ping.direct"]["p50"], "ms", floor_key=f"{fl2}.p50", note="blocking Client")
        self.res.add("latency", "ping.sms.p50", "Spear ping of the SMS p50 (no execution)",
                     raw["ping.sms"]["p50"], "ms", floor_key=f"{fl2}.p50", note="blocking Client")
        for name, label, has_target in LATENCY_FUNCS:
            for path, floor, bound in (("direct", fl2, 1.5), ("sms", fl3, 2.0)):
                b = raw[f"{name}.{path}.blocking"]
                a = raw.get(f"{name}.{path}.async")
                best, which = (b, "blocking Client")
                if a is not None and a["p50"] < b["p50"]:
                    best, which = a, "AsyncClient"
                other = a if best is b else b
                note = f"{which}; other {other['p50']:.3f} ms" if other else which
                if path == "direct":
                    note += f"; node total {b['node_total_p50'] * 1e3:.0f} µs"
                self.res.add("latency", f"lat.{name}.{path}.p50", f"warm {label}, {path}: p50",
                             best["p50"], "ms", floor_key=f"{floor}.p50",
                             target=("ratio<=", bound) if has_target else None, note=note)
                self.res.add("latency", f"lat.{name}.{path}.p99", f"warm {label}, {path}: p99",
                             best["p99"], "ms", floor_key=f"{floor}.p99")
        # the wasm runtime's own cost vs a bare wasmtime-py call of the same export
        self.prog.step("latency: bare wasmtime-py call")
        bare = _bare_wasmtime_us(self.ex / "add.wat", plan.kernel_repeat)
        self.res.floor_sample("wasmtime.call", bare, "add(store, 1, 2) through wasmtime-py's Func.__call__")
        run_us = raw["b-add.direct.blocking"]["run_p50"] * 1e3
        raw["wasmtime_bare_us"] = bare
        self.res.add("latency", "wasm.run", "wasm export: Spear's run time (timings.run p50)", run_us,
                     "us", floor_key="wasmtime.call", target=("ratio<=", 1.5),
                     note="pool acquire + call + result encoding inside the spearlet")

    # ------------------------------------------------------------ throughput

    async def _pipelined(self, name: str, node: str | None, n: int, window: int) -> dict:
        from .client import AsyncClient

        spec, data, args = self.specs[name]
        async with AsyncClient(self.sms, timeout=120) as c:
            for _ in range(100):
                (await c.invoke(name, data, args=args, node=node)).raise_for_status()
            failed = []
            per = [n // window + (1 if i < n % window else 0) for i in range(window)]

            async def worker(k: int) -> None:
                for _ in range(k):
                    r = await c.invoke(name, data, args=args, node=node)
                    if not r.ok:
                        failed.append(r.info.error)

            with CpuMeter(self.pids()) as m:
                t0 = time.perf_counter()
                await asyncio.gather(*(worker(k) for k in per if k))
                dt = time.perf_counter() - t0
        return {"n": n, "window": window, "seconds": dt, "rate": n / dt, "failed": len(failed),
                "first_error": str(failed[0]) if failed else "", "cpu": m.as_json(n), "cpu_summary": m.summary(n)}

    async def _mib(self, name: str, node: str | None, n: int) -> dict:
        from .client import AsyncClient

        blob = os.urandom(MiB)
        async with AsyncClient(self.sms, timeout=60) as c:
            ts = []
            for i in range(n + 3):
                t0 = time.perf_counter()
                r = await c.invoke(name, blob, node=node)
                dt = time.perf_counter() - t0
                r.raise_for_status()
                if len(r.output) != MiB:
                    raise RuntimeError(f"1 MiB echo returned {len(r.output)} bytes")
                if i >= 3:
                    ts.append(dt)
        return _ms(ts)

    def _mib_blocking(self, c, name: str, node: str | None, n: int) -> dict:
        blob = os.urandom(MiB)
        ts = []
        for i in range(n + 3):
            t0 = time.perf_counter()
            r = c.invoke(name, blob, node=node)
            dt = time.perf_counter() - t0
            r.raise_for_status()
            if len(r.output) != MiB:
                raise RuntimeError(f"1 MiB echo returned {len(r.output)} bytes")
            if i >= 3:
                ts.append(dt)
        return _ms(ts)

    def section_throughput(self) -> None:
        plan = self.plan
        raw = self.res.raw.setdefault("throughput", {})
        with self.client() as c:
            self.prog.step("throughput: deploy")
            self.ensure(c, "b-add", sms=True, direct=True)
            self.ensure(c, "b-echo", sms=True, direct=True)
        # floor and Spear trials alternate, so a burst of noise from other
        # tenants hits both; the best trial of each counts
        best: dict[str, dict] = {}
        for t in range(plan.rate_trials):
            for path, node, hop in (("sms", None, "3hop"), ("direct", self.node, "2hop")):
                self.prog.step(f"throughput {t + 1}/{plan.rate_trials}: {plan.rate_n:,} no-op, {path}, "
                               f"{plan.window} in flight")
                if self.floor is not None:
                    floor_rate_trial(self.floor, self.res, plan, hop)
                r = self.run_async(self._pipelined("b-add", node, plan.rate_n, plan.window))
                raw.setdefault(f"{path}_trials", []).append(r)
                if path not in best or (r["rate"] > best[path]["rate"] and not r["failed"]) or best[path]["failed"]:
                    best[path] = r
        for path, hop in (("sms", "3hop"), ("direct", "2hop")):
            r = best[path]
            note = r["cpu_summary"]
            if plan.rate_trials > 1:
                note = f"best of {plan.rate_trials}; " + note
            if r["failed"]:
                note = f"{r['failed']} FAILED ({r['first_error'][:80]}); " + note
            self.res.add("throughput", f"rate.{path}",
                         f"pipelined no-op wasm invocations, {path} (AsyncClient, {plan.window} in flight)",
                         r["rate"] if not r["failed"] else None, "/s", floor_key=f"{hop}.rate",
                         target=("ratio>=", 0.6) if path == "sms" else None, note=note)
        for path, node, floor, bound in (("sms", None, "3hop", 1.2), ("direct", self.node, "2hop", None)):
            self.prog.step(f"throughput: 1 MiB echo, {path}")
            with self.client() as c:
                b = self._mib_blocking(c, "b-echo", node, plan.mib_n)
            a = self.run_async(self._mib("b-echo", node, plan.mib_n))
            raw[f"1mib.{path}"] = {"blocking": b, "async": a}
            best_, which, other = (b, "blocking Client", a) if b["p50"] <= a["p50"] else (a, "AsyncClient", b)
            self.res.add("throughput", f"mib.{path}.p50", f"1 MiB echo (Python handler echo), {path}: p50",
                         best_["p50"], "ms", floor_key=f"{floor}.1mib.p50",
                         target=("ratio<=", bound) if bound else None,
                         note=f"{which}; other {other['p50']:.2f} ms")

    def profile_pass(self) -> None:
        """An extra, unmeasured SMS throughput pass with py-spy on the SMS and the spearlet."""
        spy = _py_spy()
        if spy is None:
            self.res.skipped["profile"] = "py-spy not found (pip install py-spy)"
            return
        out_dir = Path(self.profile)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.prog.step("profile: py-spy on SMS and spearlet")
        pids = self.pids()
        spies = {}
        for name in ("sms", "spearlet"):
            path = out_dir / f"{name}.txt"
            spies[name] = (subprocess.Popen(
                [spy, "record", "--pid", str(pids[name]), "--rate", "1000", "--format", "raw",
                 "--nonblocking", "--output", str(path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True), path)
        time.sleep(1.0)  # py-spy attaches
        try:
            r = self.run_async(self._pipelined("b-add", None, max(self.plan.rate_n, 40_000), self.plan.window))
            r2 = self.run_async(self._pipelined("b-add", self.node, max(self.plan.rate_n, 10_000), self.plan.window))
        finally:
            for p, _ in spies.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            for p, _ in spies.values():
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        prof = {"rate_sms_while_profiled": r["rate"], "rate_direct_while_profiled": r2["rate"],
                "cpu_sms_pass": r["cpu_summary"], "cpu_direct_pass": r2["cpu_summary"]}
        for name, (p, path) in spies.items():
            err = p.stderr.read().decode(errors="replace") if p.stderr else ""
            if p.stderr:
                p.stderr.close()
            if not path.exists():
                prof[name] = {"error": err.strip()[-300:]}
                continue
            prof[name] = summarise_collapsed(path.read_text())
            prof[name]["file"] = str(path)
        self.res.raw["profile"] = prof
        (out_dir / "summary.json").write_text(json.dumps(prof, indent=2))

    # ------------------------------------------------------------ cold start

    def section_cold(self) -> None:
        from . import protocol as P
        import msgspec

        raw = self.res.raw.setdefault("cold", {})
        kinds = [
            ("wasm", "wasm export (new module name, cache warm)", "b-add", True),
            ("wasi", "WASI command", "b-hello", True),
            ("python", "Python handler (pyworker)", "b-noop", False),
            ("pooled", "pooled process worker", "b-worker", False),
            ("oneshot", "one-shot process (cat)", "b-oneshot", False),
        ]
        with self.client() as c:
            for key, label, base, wasm_target in kinds:
                self.prog.step(f"cold start: {label[:30]}")
                spec0, data, args = self.specs[base]
                reps = []
                for i in range(self.plan.cold_reps):
                    name = f"b-cold-{key}-{i}-{os.getpid()}"
                    spec = msgspec.structs.replace(spec0, name=name, pool=P.PoolSettings(min_warm=0))
                    t0 = time.perf_counter()
                    c.deploy(spec, node=self.node)
                    t_dep = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    r = c.invoke(name, data, args=args, node=self.node)
                    t_first = time.perf_counter() - t0
                    r.raise_for_status()
                    t0 = time.perf_counter()
                    c.invoke(name, data, args=args, node=self.node).raise_for_status()
                    t_second = time.perf_counter() - t0
                    reps.append({"deploy": t_dep * 1e3, "first": t_first * 1e3, "second": t_second * 1e3,
                                 "cold_start": r.info.timings.cold_start * 1e3, "cold": r.info.cold})
                    try:
                        c.remove(name, node=self.node)
                    except Exception:  # noqa: BLE001
                        pass
                raw[key] = reps
                med = lambda k: statistics.median(x[k] for x in reps)  # noqa: E731
                self.res.add("cold", f"cold.{key}.first", f"cold start {label}: first invoke (direct)",
                             med("first"), "ms", target=("<", 5.0) if wasm_target else None,
                             note=f"timings.cold_start {med('cold_start'):.2f} ms; deploy {med('deploy'):.1f} ms; "
                                  f"second call {med('second'):.2f} ms"
                                  + (f"; median of {len(reps)}" if len(reps) > 1 else ""))

    # ------------------------------------------------------------ parallel

    async def _fib_parallel(self, n: int, per_worker: int, workers: int) -> tuple[float, list[float]]:
        from .client import AsyncClient

        spec, data, args = self.specs["b-fib"]
        runs: list[float] = []
        async with AsyncClient(self.sms, timeout=120) as c:
            async def worker() -> None:
                for _ in range(per_worker):
                    r = await c.invoke("b-fib", data, node=self.node)
                    r.raise_for_status()
                    runs.append(r.info.timings.run)

            # warm every instance
            await asyncio.gather(*(c.invoke("b-fib", data, node=self.node) for _ in range(workers)))
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(workers)))
            return time.perf_counter() - t0, runs

    def section_parallel(self) -> None:
        cpus = self.cpus
        n = self.plan.fib_n
        per = max(1, n // cpus)
        n = per * cpus
        trials = self.plan.rate_trials
        self.prog.step(f"parallel: deploy fib with {cpus} warm workers")
        with self.client(timeout=120) as c:
            self.ensure(c, "b-fib", sms=False, direct=True)
            spec, data, _ = self.specs["b-fib"]
            for _ in range(3):
                c.invoke("b-fib", data, node=self.node).raise_for_status()
        # Spear and bare-process trials alternate; the best efficiency of each counts
        best = None
        raw = self.res.raw.setdefault("parallel", {"n": n, "cpus": cpus, "trials": []})
        for t in range(trials):
            self.prog.step(f"parallel {t + 1}/{trials}: fib({self.plan.fib_arg}) x{n}, serial then {cpus} wide")
            runs_s = []
            with self.client(timeout=120) as c:
                t0 = time.perf_counter()
                for _ in range(n):
                    r = c.invoke("b-fib", data, node=self.node)
                    r.raise_for_status()
                    runs_s.append(r.info.timings.run)
                t_serial = time.perf_counter() - t0
            t_par, runs_p = self.run_async(self._fib_parallel(n, per, cpus))
            eff = (t_serial / t_par) / cpus
            b_serial, b_par = bare_parallel(self.plan.fib_arg, n, cpus)
            self.res.floor_sample("parallel.efficiency", (b_serial / b_par) / cpus,
                                  f"serial {b_serial:.2f}s, parallel {b_par:.2f}s")
            one = {"t_serial": t_serial, "t_parallel": t_par, "efficiency": eff,
                   "bare_serial": b_serial, "bare_parallel": b_par, "bare_efficiency": (b_serial / b_par) / cpus,
                   "run_p50_serial_ms": pct(runs_s, 50) * 1e3, "run_p50_parallel_ms": pct(runs_p, 50) * 1e3}
            raw["trials"].append(one)
            if best is None or eff > best["efficiency"]:
                best = one
        note = (f"fib({self.plan.fib_arg}) x{n}: serial {best['t_serial']:.2f}s, parallel {best['t_parallel']:.2f}s; "
                f"run p50 {best['run_p50_serial_ms']:.1f} -> {best['run_p50_parallel_ms']:.1f} ms")
        if trials > 1:
            note = f"best of {trials}; " + note
        self.res.add("parallel", "parallel.efficiency",
                     f"CPU-bound Python handler on {cpus} cores: parallel efficiency", best["efficiency"], "%",
                     floor_key="parallel.efficiency", target=(">=", 0.95), note=note)

    # ------------------------------------------------------------ docker

    def section_docker(self) -> None:
        from . import protocol as P

        self.prog.step("docker: one-shot and pooled containers")
        if "docker" not in self.runtimes:
            why = self.unavailable.get("docker", "the node does not offer the docker runtime")
            self.res.skipped["docker"] = why
            self.res.add("docker", "docker.skipped", "docker runtime", None, "ms", note=f"skipped: {why}")
            return
        image = "spear-test/busybox:latest"
        raw = self.res.raw.setdefault("docker", {})
        specs = {
            "oneshot": P.FunctionSpec(name="b-dock-once", runtime="docker", image=image, command=["cat"]),
            "pooled": P.FunctionSpec(name="b-dock-pool", runtime="docker", image=image, command=["cat"],
                                     mode="pooled", pool=P.PoolSettings(min_warm=0)),
        }
        with self.client(timeout=120) as c:
            for kind, spec in specs.items():
                try:
                    c.deploy(spec, node=self.node)
                    t0 = time.perf_counter()
                    r = c.invoke(spec.name, b"spear", node=self.node)
                    first = time.perf_counter() - t0
                    r.raise_for_status()
                    n = self.plan.docker_oneshot_n if kind == "oneshot" else self.plan.docker_pooled_n
                    ts = []
                    for _ in range(n):
                        t0 = time.perf_counter()
                        c.invoke(spec.name, b"spear", node=self.node).raise_for_status()
                        ts.append(time.perf_counter() - t0)
                    raw[kind] = {"first_ms": first * 1e3, **_ms(ts)}
                    self.res.add("docker", f"docker.{kind}.p50", f"docker {kind} container (cat), direct: p50",
                                 raw[kind]["p50"], "ms",
                                 note=f"first call {first * 1e3:.0f} ms (cold: {r.info.timings.cold_start * 1e3:.0f} ms); n={n}")
                except Exception as exc:  # noqa: BLE001 - report, do not abort the run
                    msg = getattr(exc, "message", str(exc))
                    self.res.skipped[f"docker.{kind}"] = msg
                    self.res.add("docker", f"docker.{kind}.p50", f"docker {kind} container (cat), direct: p50",
                                 None, "ms", note=f"failed: {msg[:100]}")
                finally:
                    try:
                        c.remove(spec.name, node=self.node)
                    except Exception:  # noqa: BLE001
                        pass

    # ------------------------------------------------------------ run

    def run(self) -> Results:
        want = self.sections
        plan = self.plan
        try:
            if "scheduler" in want:
                measure_scheduler(self.res, plan, self.prog)
            if "pool" in want:
                measure_pool(self.res, plan, self.prog)
            if "floor" in want:
                # the floor's servers stay up (idle) for the whole run, for interleaved trials
                self.floor = Floor()
                self.floor.start()
                floor_latency_pass(self.floor, self.res, plan, self.prog)
                if "throughput" not in want:  # otherwise interleaved with Spear's trials
                    self.prog.step("floor: pipelined round trips")
                    for _ in range(plan.rate_trials):
                        floor_rate_trial(self.floor, self.res, plan, "2hop")
                        floor_rate_trial(self.floor, self.res, plan, "3hop")
            if CLUSTER_SECTIONS & set(want):
                self.start_cluster()
                if "rss" in want:
                    self.section_rss()
                self.prog.step("startup: deploy + first result via SMS")
                self.first_result()
                if "latency" in want:
                    self.section_latency()
                if "throughput" in want:
                    self.section_throughput()
                if "cold" in want:
                    self.section_cold()
                if "parallel" in want:
                    self.section_parallel()
                if "docker" in want:
                    self.section_docker()
                if "rss" in want:
                    loaded = self.measure_rss("after_load")
                    for f in self.res.figures:
                        if f.key in ("rss.sms", "rss.spearlet"):
                            v = loaded.get(f.key.split(".")[1])
                            f.note = f"after the load: {v:.1f} MB" if v else ""
                if self.profile:
                    self.profile_pass()
                self.stop_cluster()
                if self.floor is not None and plan.refloor:
                    floor_latency_pass(self.floor, self.res, plan, self.prog, tag=" (again)")
        finally:
            self.stop_cluster()
            if self.floor is not None:
                self.floor.stop()
                self.floor = None
        floor_figures(self.res)
        self.res.finalize()
        order = {s: i for i, s in enumerate(("floor", "latency", "throughput", "startup", "cold",
                                             "scheduler", "pool", "rss", "parallel", "docker"))}
        self.res.figures.sort(key=lambda f: order.get(f.section, 99))
        return self.res


def _bare_wasmtime_us(wat: Path, repeat: int) -> float:
    """µs per call of the ``add`` export through plain wasmtime-py."""
    import wasmtime

    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module(engine, wat.read_text())
    inst = wasmtime.Instance(store, module, [])
    add = inst.exports(store)["add"]
    assert add(store, 1, 2) == 3
    return _best_time(lambda: add(store, 1, 2), repeat) * 1e6


def _py_spy() -> str | None:
    cand = Path(sys.executable).parent / "py-spy"
    if cand.exists():
        return str(cand)
    return shutil.which("py-spy")


#: leaf frames of threads that are waiting, not working (py-spy may still sample them)
_WAITING = ("Condition.wait (threading.py)", "Event.wait (threading.py)", "select (selectors.py)",
            "_worker (concurrent/futures/thread.py)")


def summarise_collapsed(text: str, top: int = 25) -> dict:
    """Self and inclusive shares per function from py-spy's raw (collapsed) output.

    Shares are of the samples where a thread was working: samples whose
    leaf is a thread wait (the wasm epoch ticker, idle pool threads) are
    counted apart as ``waiting_pct``. Under CPU contention a runnable thread
    that is waiting for a core is sampled where it stands, typically right
    after a syscall that woke another thread (``Socket.send``) or in the
    event loop's own C code (``Runner.run`` under uvloop).
    """
    import re

    strip = re.compile(r":\d+\)$")
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = waiting = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [strip.sub(")", f) for f in stack.split(";")]
        leaf = frames[-1]
        if leaf in _WAITING:
            waiting += n
            continue
        total += n
        self_t[leaf] = self_t.get(leaf, 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n
    if not total:
        return {"samples": 0, "waiting_samples": waiting}

    def share(d: dict) -> list:
        return [(k, round(v / total * 100, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "waiting_samples": waiting, "self": share(self_t), "inclusive": share(incl)}


# ====================================================================== output


def print_results(res: Results, plan: Plan) -> None:
    rows = []
    for f in res.figures:
        r = f.ratio
        rows.append([
            f.figure,
            _fmt(f.value, f.unit),
            _fmt(f.floor, f.unit) if f.floor is not None else "",
            f"{r:.2f}x" if r is not None else "",
            f.target,
            {True: "pass", False: "FAIL", None: ""}[f.passed],
            f.note,
        ])
    title = f"spear bench ({'quick' if plan.quick else 'full'} run)"
    cols = ["figure", "value", "floor", "ratio", "SPEC target", "pass/fail", "note"]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        print(title)
        for r in [cols, *rows]:
            print(" | ".join(str(x) for x in r))
        return
    t = Table(title=title, header_style="bold", show_lines=False)
    for c in cols:
        t.add_column(c, overflow="fold", no_wrap=c in ("value", "floor", "ratio", "pass/fail"))
    for r in rows:
        style = "red" if r[5] == "FAIL" else ("green" if r[5] == "pass" else None)
        t.add_row(*[str(x) for x in r], style=style)
    width = 220 if not sys.stdout.isatty() else max(120, shutil.get_terminal_size().columns)
    Console(width=width).print(t)
    for k, why in res.skipped.items():
        print(f"skipped {k}: {why}")


def _meta(plan: Plan, sections: list[str], started: float) -> dict:
    import msgspec
    import zmq

    import spear
    import spear.fast as fast

    rev = ""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "quick": plan.quick,
        "sections": sections,
        "plan": plan.__dict__,
        "spear": getattr(spear, "__version__", ""),
        "git": rev,
        "python": sys.version.split()[0],
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgspec": msgspec.__version__,
        "extensions": fast.EXTENSIONS,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "loadavg_at_end": load,
        "config": "spearlet max_concurrency raised to >= 4096 (default 64) so a pipelined window fits; process functions run as the bench's own user",
    }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def write_json(path: str, res: Results, meta: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "figures": [f.as_json() for f in res.figures], "floor": res.floor,
           "skipped": res.skipped, "raw": _jsonable(res.raw)}
    p.write_text(json.dumps(doc, indent=2, default=str) + "\n")


# ====================================================================== entry points


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``spear bench`` / ``python -m bench``."""
    p.add_argument("--quick", action="store_true", help="a smaller run (about a minute)")
    p.add_argument("--json", metavar="PATH", default="bench/results.json",
                   help="where to write the figures as JSON (default bench/results.json)")
    p.add_argument("--only", metavar="SECTIONS", default="",
                   help=f"comma-separated sections to run: {','.join(SECTIONS)} "
                        "(floor is added when latency or throughput is asked)")
    p.add_argument("--spearlets", type=int, default=1, help="spearlets in the cluster (default 1)")
    p.add_argument("--window", type=int, default=None, help="invocations in flight for throughput (default 512)")
    p.add_argument("--profile", metavar="DIR", default=None,
                   help="after measuring, run the SMS load again under py-spy and write profiles to DIR")
    p.add_argument("--data", metavar="DIR", default=None, help="cluster data directory (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temporary cluster data (logs)")
    p.add_argument("--no-progress", action="store_true", help="plain progress lines instead of a bar")
    return p


def _sections(only: str) -> list[str]:
    if not only:
        return list(SECTIONS)
    want = [s.strip() for s in only.split(",") if s.strip()]
    bad = [s for s in want if s not in SECTIONS]
    if bad:
        raise SystemExit(f"spear bench: unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    if FLOOR_SECTIONS & set(want) and "floor" not in want:
        want.insert(0, "floor")
    return [s for s in SECTIONS if s in want]


def _count_steps(sections: list[str], plan: Plan, profile: bool) -> int:
    want = set(sections)
    n = 0
    if "scheduler" in want:
        n += 3
    if "pool" in want:
        n += 1
    if "floor" in want:
        n += 2 + (0 if "throughput" in want else 1)
        if plan.refloor and CLUSTER_SECTIONS & want:
            n += 2
    if CLUSTER_SECTIONS & want:
        n += 2
        if "rss" in want:
            n += 1
        if "latency" in want:
            n += 2 + len(LATENCY_FUNCS) * 2 + 2
        if "throughput" in want:
            n += 1 + 2 * plan.rate_trials + 2
        if "cold" in want:
            n += 5
        if "parallel" in want:
            n += 1 + plan.rate_trials
        if "docker" in want:
            n += 1
        if profile:
            n += 1
    return n


def run(args: argparse.Namespace) -> int:
    """Run the harness with parsed ``args``; returns an exit code."""
    started = time.perf_counter()
    plan = Plan.make(args.quick)
    plan.spearlets = max(1, args.spearlets)
    if args.window:
        plan.window = args.window
    sections = _sections(args.only)
    prog = Progress(_count_steps(sections, plan, bool(args.profile)), enabled=not args.no_progress)
    bench = Bench(plan, sections, prog, profile=args.profile, keep=args.keep, data=args.data)

    def on_term(signum, frame):  # SIGTERM stops the run like Ctrl-C: cleanup runs in finally
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        with prog:
            res = bench.run()
    except KeyboardInterrupt:
        print("spear bench: interrupted; everything it started was stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
    print_results(res, plan)
    if "profile" in res.raw:
        _print_profile(res.raw["profile"])
    meta = _meta(plan, sections, started)
    write_json(args.json, res, meta)
    failed = sum(1 for f in res.figures if f.passed is False)
    print(f"wrote {args.json} in {meta['seconds']:.0f}s; {sum(1 for f in res.figures if f.passed)} pass, "
          f"{failed} fail against SPEC section 9")
    return 0


def _print_profile(prof: dict) -> None:
    print(f"\nprofile (py-spy, SMS load {prof.get('rate_sms_while_profiled', 0):,.0f}/s, "
          f"direct {prof.get('rate_direct_while_profiled', 0):,.0f}/s while sampled)")
    print(f"  SMS pass: {prof.get('cpu_sms_pass', '')}; direct pass: {prof.get('cpu_direct_pass', '')}")
    for name in ("sms", "spearlet"):
        p = prof.get(name) or {}
        if "self" not in p:
            print(f"  {name}: no profile ({p.get('error', 'no samples')})")
            continue
        print(f"  {name}: {p['samples']} working samples ({p['waiting_samples']} in thread waits left out); "
              "top self time:")
        for fn, share in p["self"][:15]:
            print(f"    {share:5.1f}%  {fn}")


def main(argv: list[str] | None = None) -> int:
    """``python -m bench`` / ``python -m spear.bench``."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="spear bench", description="Spear's figures against a bare-pyzmq floor (SPEC section 9)"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
