"""The 3-hop floor's broker: ROUTER (clients) / ROUTER (one worker), frames forwarded untouched.

Prints its front and back ports on stdout, waits for the worker's READY,
then runs a blocking poll loop that drains each socket with NOBLOCK, until
killed.
"""

import zmq

from floor_wire import sock


def main() -> None:
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
    frecv, fsend = front.recv_multipart, front.send_multipart
    brecv, bsend = back.recv_multipart, back.send_multipart
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


if __name__ == "__main__":
    main()
