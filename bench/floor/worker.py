"""The 3-hop floor's worker: a DEALER behind the broker that answers every request.

argv: the broker's back address. Sends READY, then answers until killed.
"""

import sys

import zmq

from floor_wire import answer, sock


def main(addr: str) -> None:
    ctx = zmq.Context()
    s = sock(ctx, zmq.DEALER)
    s.connect(addr)
    s.send(b"READY")
    recv, send = s.recv_multipart, s.send_multipart
    while True:
        out = answer(recv(), 1)  # [client id, version, body, payload?]
        if out is not None:
            send(out)


if __name__ == "__main__":
    main(sys.argv[1])
