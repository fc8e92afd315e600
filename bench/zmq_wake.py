"""What a late reply costs to send: a bare pyzmq DEALER/ROUTER echo whose server
works (spins) for a while before each reply.

libzmq's I/O thread sleeps when it has nothing to do; a reply sent right after
the request finds it awake, one sent later must wake it first. This prints,
with no Spear code, the round trip p50 and the server's mean time inside
``send_multipart`` for each delay::

    python bench/zmq_wake.py              # 0, 30 and 100 us of work per request
    python bench/zmq_wake.py 0 50 --n 10000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import zmq


def _server(port_q: mp.Queue, out_q: mp.Queue, work_us: float) -> None:
    sock = zmq.Context().socket(zmq.ROUTER)
    port_q.put(sock.bind_to_random_port("tcp://127.0.0.1"))
    perf = time.perf_counter
    spent, n = 0.0, 0
    while True:
        frames = sock.recv_multipart()
        if frames[1] == b"stop":
            break
        until = perf() + work_us / 1e6
        while perf() < until:
            pass
        t0 = perf()
        sock.send_multipart(frames)
        spent += perf() - t0
        n += 1
    out_q.put(spent / max(n, 1) * 1e6)


def run(work_us: float, n: int) -> tuple[float, float]:
    """(round trip p50 in us, the server's mean send in us) for ``work_us`` of work."""
    port_q, out_q = mp.Queue(), mp.Queue()
    proc = mp.Process(target=_server, args=(port_q, out_q, work_us))
    proc.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"tcp://127.0.0.1:{port_q.get(timeout=10)}")
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        sock.send(b"x")
        sock.recv()
        times.append(time.perf_counter() - t0)
    sock.send(b"stop")
    send_us = out_q.get(timeout=10)
    proc.join(10)
    sock.close(linger=0)
    ctx.term()
    times.sort()
    return times[len(times) // 2] * 1e6, send_us


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", nargs="*", type=float, default=[0.0, 30.0, 100.0],
                    help="microseconds of work before each reply")
    ap.add_argument("--n", type=int, default=5000, help="round trips per delay")
    args = ap.parse_args(argv)
    for work in args.work:
        p50, send = run(work, args.n)
        print(f"work {work:5.0f} us: round trip p50 {p50:6.1f} us, server's send {send:5.1f} us")


if __name__ == "__main__":
    main()
