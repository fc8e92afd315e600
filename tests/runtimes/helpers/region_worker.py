#!/usr/bin/env python3
"""A pooled command worker that takes its shared region and abuses it on request.

Protocol 2 (requests on fd 3, replies on fd 4), saying ``region`` in its ready
reply when ``SPEAR_WORKER_REGION`` names a descriptor. The input is a command
(over the pipe; or the region's bytes when the header says so, which then
echoes them): ``echo N`` replies N bytes through the region; ``len N`` replies
status 3 with length N and writes nothing; ``short`` replies status 3 with a
3-byte payload; ``grow``/``shrink`` try to resize the region and ``past``
tries to write after its end, replying what the kernel said; ``fd`` replies
the region's descriptor number; ``unasked`` (with ``SPEAR_WORKER_REGION``
ignored, see below) replies status 3 although it never took a region.
``noregion`` in argv makes it ignore its region. Standard library only.
"""

import errno
import json
import os
import struct
import sys

REQ, REP = 3, 4
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
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


def attempt(fn) -> bytes:
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno)).encode()
    return b"done"


region = -1
if "noregion" not in sys.argv and os.environ.get("SPEAR_WORKER_REGION", "").isdigit():
    region = int(os.environ["SPEAR_WORKER_REGION"])
reply(b"region-worker 2 region" if region >= 0 else b"region-worker 2")
size = os.fstat(region).st_size if region >= 0 else 0
while True:
    body = read_exact(U32.unpack(read_exact(4))[0])
    (hlen,) = U32.unpack_from(body)
    header = json.loads(body[4:4 + hlen]) if hlen else {}
    if "region" in header:
        data = os.pread(region, header["region"], 0)
        os.pwrite(region, data, 0)
        reply(U64.pack(len(data)), status=3)
        continue
    cmd, _, arg = body[4 + hlen:].decode().partition(" ")
    if cmd == "echo":
        os.pwrite(region, b"z" * int(arg), 0)
        reply(U64.pack(int(arg)), status=3)
    elif cmd in ("len", "unasked"):
        reply(U64.pack(int(arg or 1)), status=3)
    elif cmd == "short":
        reply(b"abc", status=3)
    elif cmd == "grow":
        reply(attempt(lambda: os.ftruncate(region, size * 2)))
    elif cmd == "shrink":
        reply(attempt(lambda: os.ftruncate(region, 4096)))
    elif cmd == "past":
        reply(attempt(lambda: os.pwrite(region, b"x" * 4096, size)))
    elif cmd == "fd":
        reply(str(region).encode())
    else:
        reply(b"ok")
