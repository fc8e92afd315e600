"""A minimal pooled process worker (docs/worker-protocol.md) that does nothing.

Deployed by the bench as ``[sys.executable, this file]``: it announces
itself on fd 4, then answers every request read from fd 3 with an empty
success, until fd 3 closes.
"""

import os
import struct

U32 = struct.Struct(">I")
REPLY = struct.Struct(">IB")


def main() -> None:
    r = os.fdopen(3, "rb", buffering=1 << 16)
    os.write(4, REPLY.pack(1 + 5, 0) + b"noop2")
    while True:
        head = r.read(4)
        if len(head) < 4:
            break
        r.read(U32.unpack(head)[0])
        os.write(4, REPLY.pack(1, 0))


if __name__ == "__main__":
    main()
