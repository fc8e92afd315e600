"""A bare child that echoes length-prefixed frames from stdin to stdout.

The cost of moving data through a worker's pipes, without Spear. Exits at
end of input.
"""

import os
import struct

R, W = 0, 1


def read_exactly(n: int) -> bytearray:
    buf = bytearray(n)
    mv = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(R, [mv[got:]])
        if not k:
            raise SystemExit(0)
        got += k
    return buf


def main() -> None:
    while True:
        (n,) = struct.unpack(">I", read_exactly(4))
        data = bytes(read_exactly(n))
        out = memoryview(struct.pack(">I", n) + data)
        while out:
            out = out[os.write(W, out):]


if __name__ == "__main__":
    main()
