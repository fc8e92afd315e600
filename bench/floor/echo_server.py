"""The 2-hop floor's server: a ROUTER that answers every request itself.

Binds a random loopback port and prints it on stdout; runs until killed.
"""

import zmq

from floor_wire import answer, sock


def main() -> None:
    ctx = zmq.Context()
    s = sock(ctx, zmq.ROUTER)
    print(s.bind_to_random_port("tcp://127.0.0.1"), flush=True)
    recv, send = s.recv_multipart, s.send_multipart
    while True:
        out = answer(recv(), 1)  # [client id, version, body, payload?]
        if out is not None:
            send(out)


if __name__ == "__main__":
    main()
