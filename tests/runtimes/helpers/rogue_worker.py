#!/usr/bin/env python3
"""A pooled command worker (protocol 2: requests on fd 3, replies on fd 4) that misbehaves on request.

Inputs: ``ok`` replies "ok"; ``pid`` its pid; ``stdout-frame`` first writes bytes shaped
like a reply frame to stdout; ``bad-status`` replies with status 104; ``extra`` sends its
reply followed by stray bytes; ``later`` replies, then writes a stray frame header
0.2 s later (between calls); ``big N`` replies N MiB; ``spin S`` burns CPU for S seconds.
Standard library only.
"""

import os
import struct
import sys
import threading
import time

REQ, REP = 3, 4
U32 = struct.Struct(">I")
REPLY = struct.Struct(">IB")


def read_exact(n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(REQ, n - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def reply(payload: bytes, status: int = 0) -> None:
    write_all(REP, REPLY.pack(len(payload) + 1, status) + payload)


reply(b"rogue-worker 2")
while True:
    body = read_exact(U32.unpack(read_exact(4))[0])
    (hlen,) = U32.unpack_from(body)
    cmd, _, arg = body[4 + hlen:].decode().partition(" ")
    if cmd == "stdout-frame":
        write_all(1, REPLY.pack(6, 0) + b"FAKE!" + U32.pack(4096))
        reply(b"real")
    elif cmd == "bad-status":
        reply(b"hello", status=104)
    elif cmd == "extra":
        write_all(REP, REPLY.pack(3, 0) + b"ok" + b"\x00\x00\x00")
    elif cmd == "later":
        reply(b"ok")
        threading.Timer(0.2, write_all, (REP, U32.pack(1 << 20))).start()
    elif cmd == "big":
        reply(b"y" * (int(arg) << 20))
    elif cmd == "spin":
        end = time.time() + float(arg)
        while time.time() < end:
            pass
        reply(b"spun")
    elif cmd == "pid":
        reply(str(os.getpid()).encode())
    else:
        reply(b"ok")
