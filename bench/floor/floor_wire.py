"""The floor's wire: pyzmq + msgspec only, no Spear code.

A request is ``[version, msgpack Call, payload?]`` like Spear's frames; the
servers decode each Call and answer ``[version, msgpack Reply, payload?]``.
Imported by the floor programs beside it (run as scripts) and by the
harness's client (``bench.harness.floor``).
"""

import msgspec
import zmq

PROTO = b"FLOOR/1"


class Call(msgspec.Struct, tag=True, omit_defaults=True):
    """A no-op invocation."""

    id: int
    function: str
    args: list[int] = []


class Reply(msgspec.Struct, tag=True, omit_defaults=True):
    """Its answer."""

    id: int
    status: str


_decode = msgspec.msgpack.Decoder(Call).decode
_encode = msgspec.msgpack.Encoder().encode


def sock(ctx: zmq.Context, kind: int) -> zmq.Socket:
    """A socket with no linger and high-water marks far above any window the bench uses."""
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 500_000)
    s.setsockopt(zmq.RCVHWM, 500_000)
    return s


def answer(f: list, at: int) -> list | None:
    """The reply frames to request frames ``f`` whose version frame is ``f[at]``.

    Frames before ``at`` (routing ids) are kept; the payload after the body
    is forwarded as is. None for a frame of another protocol.
    """
    if f[at] != PROTO:
        return None
    msg = _decode(f[at + 1])
    out = f[:at]
    out.append(PROTO)
    out.append(_encode(Reply(id=msg.id, status="succeeded")))
    out.extend(f[at + 2:])
    return out
