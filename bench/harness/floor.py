"""The floor: what bare pyzmq + msgspec (and bare processes, bare wasmtime) achieve right now.

The servers are the programs in ``bench/floor/`` (echo server, broker,
worker), each in its own process, up for the whole run so floor and Spear
trials can alternate; this module is their client and records the samples.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import zmq

from bench.floor.floor_wire import PROTO, Call, Reply, sock

from .plan import PAYLOADS, Plan, echo_warm
from .procs import CpuMeter, Progress, program, stop_proc
from .results import Figure, Results, ms


class Floor:
    """The bare pyzmq servers (separate processes) and the in-process client."""

    def __init__(self) -> None:
        import msgspec

        self.procs: list[subprocess.Popen] = []
        self.ctx = zmq.Context()
        self.enc = msgspec.msgpack.Encoder()
        self.dec = msgspec.msgpack.Decoder(Reply)
        self.echo_addr = ""
        self.broker_addr = ""
        self.pids: dict[str, int] = {}

    def _spawn(self, key: str, *argv: str, reports_ports: bool = True) -> list[str]:
        """Start floor program ``argv``; the ports it prints, unless it prints none."""
        p = subprocess.Popen(program(*argv), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        self.procs.append(p)
        self.pids[key] = p.pid
        if not reports_ports:
            return []
        line = p.stdout.readline().decode().split()
        if not line:
            raise RuntimeError(f"floor {key} process did not start (exit {p.poll()})")
        return line

    def start(self) -> None:
        """Start the echo server, the broker and its worker."""
        (port,) = self._spawn("echo", "echo_server")
        self.echo_addr = f"tcp://127.0.0.1:{port}"
        fport, bport = self._spawn("broker", "broker")
        self.broker_addr = f"tcp://127.0.0.1:{fport}"
        self._spawn("worker", "worker", f"tcp://127.0.0.1:{bport}", reports_ports=False)

    def stop(self) -> None:
        """Stop every server and close the client's context."""
        for p in self.procs:
            stop_proc(p)
        self.procs.clear()
        self.ctx.destroy(linger=0)

    def latency(self, addr: str, n: int, payload: bytes | None = None, warm: int = 100) -> list[float]:
        """Sequential round trips; seconds each."""
        s = sock(self.ctx, zmq.DEALER)
        s.connect(addr)
        enc, dec = self.enc.encode, self.dec.decode
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

    def echo(self, addr: str, size: int, n: int) -> list[float]:
        """``n`` sequential echoes of a random ``size``-byte payload frame; seconds each."""
        return self.latency(addr, n, os.urandom(size), warm=echo_warm(size))

    def pipelined(self, addr: str, n: int, window: int) -> float:
        """Round trips per second with ``window`` requests in flight."""
        s = sock(self.ctx, zmq.DEALER)
        s.connect(addr)
        enc, dec = self.enc.encode, self.dec.decode
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
            poll, NOBLOCK, Again = s.poll, zmq.NOBLOCK, zmq.Again
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


def latency_pass(fl: Floor, res: Results, plan: Plan, prog: Progress, tag: str = "") -> None:
    """Sequential round trips (small, then each echo payload) through both floors and a bare child's pipes."""
    raw = res.raw.setdefault("floor", {}).setdefault("latency_passes", [])
    one: dict[str, Any] = {}
    prog.step(f"floor{tag}: 2-hop and 3-hop round trips")
    for hop, addr in (("2hop", fl.echo_addr), ("3hop", fl.broker_addr)):
        m = ms(fl.latency(addr, plan.floor_lat_n))
        one[hop] = m
        res.floor_sample(f"{hop}.p50", m["p50"])
        res.floor_sample(f"{hop}.p99", m["p99"])
    for size_tag, size, label in PAYLOADS:
        prog.step(f"floor{tag}: {label} echo")
        n = plan.echo_n[size_tag]
        for hop, addr in (("2hop", fl.echo_addr), ("3hop", fl.broker_addr)):
            m = ms(fl.echo(addr, size, n))
            one[f"{hop}_{size_tag}"] = m
            res.floor_sample(f"{hop}.{size_tag}.p50", m["p50"])
        m = ms(pipe_echo(os.urandom(size), n))
        one[f"pipe_{size_tag}"] = m
        res.floor_sample(f"pipe.{size_tag}.p50", m["p50"])
    raw.append(one)


def rate_trial(fl: Floor, res: Results, plan: Plan, hop: str) -> float:
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


#: a function's pipes as Spear's process runtime sizes them (as root; the default elsewhere)
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _size_pipe(fd: int) -> None:
    if os.geteuid() != 0:
        return
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        pass


def pipe_echo(blob: bytes, n: int) -> list[float]:
    """Round trips of ``blob`` through a bare child's stdin/stdout (pipes sized as Spear's).

    The child reads a whole frame before it answers, so writing all of a
    frame larger than the pipes before reading cannot deadlock.
    """
    p = subprocess.Popen(program("pipe_echo"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    try:
        for f in (p.stdin, p.stdout):
            _size_pipe(f.fileno())
        frame = struct.pack(">I", len(blob)) + blob
        ts = []
        warm = echo_warm(len(blob))
        for i in range(n + warm):
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
            if i >= warm:
                ts.append(time.perf_counter() - t0)
        return ts
    finally:
        p.stdin.close()
        p.wait(5)
        p.stdout.close()


def bare_parallel(arg: int, n: int, workers: int) -> tuple[float, float]:
    """(serial seconds, parallel seconds) of ``n`` fib(arg) in bare processes."""

    def run(k: int, count: int) -> float:
        procs = [subprocess.Popen(program("fib", str(k), str(arg)), stdin=subprocess.PIPE,
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
                stop_proc(p)

    per = max(1, n // workers)
    return run(per * workers, 1), run(per, workers)


def bare_wasmtime_us(wat: Path, repeat: int) -> float:
    """µs per call of the ``add`` export through plain wasmtime-py."""
    import wasmtime

    from .kernels import best_time

    engine = wasmtime.Engine()
    store = wasmtime.Store(engine)
    module = wasmtime.Module(engine, wat.read_text())
    inst = wasmtime.Instance(store, module, [])
    add = inst.exports(store)["add"]
    assert add(store, 1, 2) == 3
    return best_time(lambda: add(store, 1, 2), repeat) * 1e6


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
        *((key, label, "ms") for size_tag, _, size_label in PAYLOADS for key, label in (
            (f"2hop.{size_tag}.p50", f"floor: {size_label} echo p50, 2-hop"),
            (f"3hop.{size_tag}.p50", f"floor: {size_label} echo p50, 3-hop broker"),
            (f"pipe.{size_tag}.p50", f"floor: {size_label} echo p50 through a bare child's pipes (a worker's hop)"),
        )),
        ("parallel.efficiency", "floor: bare processes on all cores: parallel efficiency", "%"),
        ("wasmtime.call", "floor: bare wasmtime-py call of the add export", "us"),
    ]
    for key, label, unit in reversed(rows):
        v = res.best_floor(key)
        if v is not None:
            res.figures.insert(0, Figure("floor", f"floor.{key}", label, v, unit, note=note(key)))
