"""What the fuzzers send: hypothesis strategies built from the wire types, mutations, bad frames.

:data:`MESSAGE_STRATEGIES` draws valid messages of every type of
:data:`spear.protocol.Message` from the msgspec type annotations
(``msgspec.inspect``) with field-aware strategies: node ids, execution ids and
function names are drawn partly as references (:data:`REF` placeholders) that
the wire fuzz resolves against the live cluster at send time. The
``mutate_*`` functions turn a drawn message into an invalid one (extreme ints,
wrong types, dropped or unknown fields, swapped tags, MB-sized values, deep
nesting, bit flips, truncation, odd frame lists). :data:`UNDECODABLE` holds the
frames behind the decoder findings (tests/fuzz/test_protocol.py).

Used by tests/fuzz/test_wire.py (through harness.py) and by the seeds of
tests/fuzz/atheris_sms.py; imports only spear and tests.helpers.
"""

from __future__ import annotations

import math
import random

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

from spear import errors, protocol as P
from tests.helpers import ADD_WAT

__all__ = ["ADD_WAT", "MESSAGE_STRATEGIES", "REF", "UNDECODABLE", "NON_UTF8_IDENT"]

#: a routing id that is not UTF-8 (node ids and routing ids are decoded as text)
NON_UTF8_IDENT = b"\xff\xfeFZ\x80\x01"

# ------------------------------------------------------------------ references

#: placeholders drawn by hypothesis and resolved against the live run at send time
REF = "\x00REF:"


def ref(kind: str) -> str:
    """The placeholder for a live value of ``kind`` (e.g. ``node:real``)."""
    return REF + kind


NODE_REFS = [ref("node:real"), ref("node:fake"), ref("node:fake"), ref("node:gone")]
EXEC_REFS = [ref("exec:pre"), ref("exec:recent"), ref("exec:random")]
FN_REFS = [ref("fn:add"), ref("fn:fuzz"), ref("fn:fuzz")]
ART_REF = ref("art:wat")

EDGE_INTS = (0, 1, -1, 2**31 - 1, 2**31, -2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63,
             2**64 - 1, -2**63)
ODD_VALUES = (*EDGE_INTS, 0.5, -0.0, 1e308, -1e308, math.inf, -math.inf, math.nan, True, False,
              None, "", "x", "\x00", "\u00e9\u00e9", "\ud7ff", b"", b"\xff\x00", [], [1, "a", None],
              {}, {"a": 1}, {1: "a"}, {"": None}, {"t": "Ping", "id": 1})
ALL_TAGS = tuple(sorted(t.tag for t in mi.type_info(P.Message).types))

# ------------------------------------------------------------------ strategies from the types

_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,20}\Z"
_short = st.text(max_size=12)
_hex_id = st.binary(min_size=4, max_size=16).map(bytes.hex)
FIELD_OVERRIDES: dict[str, st.SearchStrategy] = {
    "id": st.one_of(st.integers(0, 2**31), st.integers(0, 2**31), st.sampled_from(EDGE_INTS)),
    "node_id": st.one_of(st.sampled_from(NODE_REFS), st.from_regex(_NAME_RE, fullmatch=True)),
    "execution_id": st.one_of(st.sampled_from(EXEC_REFS), _hex_id, _short),
    "function": st.one_of(st.sampled_from(FN_REFS), st.from_regex(_NAME_RE, fullmatch=True)),
    "name": st.one_of(st.sampled_from(FN_REFS), st.from_regex(_NAME_RE, fullmatch=True)),
    "artifact": st.one_of(st.none(), st.binary(max_size=48), st.just(ART_REF)),
    "handler": st.one_of(st.sampled_from(["add", "divmod", "count", "scale", "", "nope",
                                          "mod:fn", "_start"]), _short),
    "command": st.lists(_short, max_size=3),
    "runtimes": st.lists(st.sampled_from(["wasm", "process", "docker", "", "wasi"]), max_size=3),
    "labels": st.dictionaries(st.one_of(st.sampled_from(["zone", "tier", "gpu"]), _short),
                              _short, max_size=3),
    "grants": st.lists(st.sampled_from(["env", "args", "network", "dir:/nonexistent", "bogus"]),
                       max_size=2),
    "env": st.dictionaries(_short, _short, max_size=2),
    "args": st.lists(st.one_of(st.integers(-2**63, 2**64 - 1), st.floats(),
                               st.integers(-100, 100)), max_size=4),
    "min_warm": st.integers(0, 2),
    "max": st.integers(1, 8),
    "limit": st.integers(1, 200),
    "offset": st.one_of(st.integers(0, 50), st.sampled_from([2**31, 2**63 - 1, 2**64 - 1])),
    "wait": st.one_of(st.just(0.0), st.floats(0, 1.0)),
    "timeout": st.one_of(st.none(), st.floats(0.001, 5.0)),
    "since": st.one_of(st.just(2**62), st.just(2**62), st.just(2**62), st.integers(0, 2**63)),
    "memory": st.one_of(st.integers(0, 2**40), st.sampled_from([0, 2**62])),
    "running_ids": st.lists(st.one_of(st.sampled_from(EXEC_REFS), _hex_id), max_size=4),
    "code": st.sampled_from([*errors.CODES, "", "BOGUS"]),
    "data": st.binary(max_size=64),
}


def _int_strategy(t: mi.IntType) -> st.SearchStrategy:
    lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else -2**63)
    hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else 2**64 - 1)
    edges = [v for v in EDGE_INTS if lo <= v <= hi]
    s_lo, s_hi = max(lo, -5), min(hi, 1000)
    small = st.integers(s_lo, s_hi) if s_lo <= s_hi else st.integers(lo, hi)
    parts = [small, small, st.integers(lo, hi)]
    if edges:
        parts.append(st.sampled_from(edges))
    return st.one_of(parts)


def _float_strategy(t: mi.FloatType) -> st.SearchStrategy:
    kw = {}
    if t.ge is not None:
        kw["min_value"] = float(t.ge)
    if t.gt is not None:
        kw.update(min_value=float(t.gt), exclude_min=True)
    if t.le is not None:
        kw["max_value"] = float(t.le)
    if t.lt is not None:
        kw.update(max_value=float(t.lt), exclude_max=True)
    if kw:
        kw["allow_nan"] = False
    return st.floats(**kw)


#: overrides that satisfy the field's own constraints (patterns, ranges, lengths)
OVERRIDE_SAFE = frozenset({"id", "node_id", "function", "name", "execution_id", "min_warm", "max",
                           "limit", "offset", "wait", "timeout", "since", "handler", "command",
                           "grants"})


def _constrained(t) -> bool:
    """Does ``t`` (or anything inside it) carry a pattern or length constraint?"""
    if isinstance(t, (mi.StrType, mi.BytesType)):
        return bool(getattr(t, "pattern", None) or t.min_length or t.max_length)
    if isinstance(t, mi.ListType):
        return bool(t.min_length or t.max_length) or _constrained(t.item_type)
    if isinstance(t, mi.DictType):
        return (bool(t.min_length or t.max_length) or _constrained(t.key_type)
                or _constrained(t.value_type))
    if isinstance(t, mi.UnionType):
        return any(_constrained(m) for m in t.types)
    return False


def strategy_for(t, field: str = "") -> st.SearchStrategy:
    """A strategy of msgpack-ready values that decode as type ``t`` (msgspec.inspect).

    Field-name overrides steer values towards the live run (real node and function
    names, execution ids); where the protocol constrains a field (patterns,
    lengths) and the override may not satisfy it, the type's own strategy is used
    instead, so that the unmutated message stays valid as the protocol evolves.
    """
    if field in FIELD_OVERRIDES and not isinstance(t, mi.StructType):
        if field in OVERRIDE_SAFE or not _constrained(t):
            return FIELD_OVERRIDES[field]
    if isinstance(t, mi.IntType):
        return _int_strategy(t)
    if isinstance(t, mi.FloatType):
        return _float_strategy(t)
    if isinstance(t, mi.StrType):
        if t.pattern:
            return st.from_regex(t.pattern, fullmatch=True)
        return st.text(min_size=t.min_length or 0, max_size=min(t.max_length or 16, 16))
    if isinstance(t, mi.BytesType):
        return st.binary(max_size=32)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.ListType):
        return st.lists(strategy_for(t.item_type), min_size=t.min_length or 0,
                        max_size=min(t.max_length or 3, 3))
    if isinstance(t, mi.DictType):
        return st.dictionaries(strategy_for(t.key_type), strategy_for(t.value_type),
                               max_size=min(t.max_length or 3, 3))
    if isinstance(t, mi.UnionType):
        return st.one_of([strategy_for(m, field) for m in t.types])
    if isinstance(t, mi.StructType):
        required = {f.encode_name: strategy_for(f.type, f.name) for f in t.fields if f.required}
        optional = {f.encode_name: strategy_for(f.type, f.name) for f in t.fields if not f.required}
        if t.tag_field is not None:
            required[t.tag_field] = st.just(t.tag)
        return st.fixed_dictionaries(required, optional=optional)
    return st.integers()


MESSAGE_STRATEGIES = {s.tag: strategy_for(s) for s in mi.type_info(P.Message).types}
any_message = st.sampled_from(ALL_TAGS).flatmap(lambda tag: MESSAGE_STRATEGIES[tag])

# ------------------------------------------------------------------ mutation

enc = msgspec.msgpack.Encoder()
_loose = msgspec.msgpack.Decoder()


def copy(obj):
    """A deep copy of a msgpack-ready value (through the wire format)."""
    return _loose.decode(enc.encode(obj))


def _slots(obj, out: list, depth: int = 0) -> list:
    """(container, key) pairs inside ``obj`` for in-place edits (big containers: a sample)."""
    if isinstance(obj, dict):
        items = list(obj.items())[:16]
    elif isinstance(obj, list):
        items = list(enumerate(obj[:16]))
    else:
        return out
    for k, v in items:
        out.append((obj, k))
        if depth < 6 and len(out) < 200:
            _slots(v, out, depth + 1)
    return out


def _huge(rnd: random.Random):
    n = rnd.choice([1 << 16, 1 << 18, 1 << 20, 3 << 20])
    kind = rnd.randrange(5)
    if kind == 0:
        return "A" * n
    if kind == 1:
        return "\u00e9" * (n // 2)
    if kind == 2:
        return rnd.randbytes(n)
    if kind == 3:
        return list(range(n // 9))
    return {f"k{i}": "v" for i in range(n // 16)}


def _nested(rnd: random.Random) -> msgspec.Raw:
    # shallow enough for every decoder, or far too deep for any (never near the limit:
    # the daemons' stack depth differs from this process's)
    depth = rnd.choice([4, 32, 128, 128, 5000, 50000])
    opener = rnd.choice([b"\x91", b"\x81\xa1k"])
    return msgspec.Raw(opener * depth + b"\xc0")


def mutate_obj(obj, rnd: random.Random):
    """One structural mutation of a decoded message (a dict), returns the new object."""
    op = rnd.choices(["int", "odd", "drop", "add", "tag", "huge", "nest", "replace"],
                     weights=[20, 25, 12, 8, 10, 2, 5, 3])[0]
    if not isinstance(obj, dict):
        return obj
    slots = _slots(obj, [])
    if op == "int" and slots:
        c, k = rnd.choice(slots)
        c[k] = rnd.choice(EDGE_INTS) if rnd.random() < 0.8 else rnd.randint(-2**63, 2**64 - 1)
    elif op == "odd" and slots:
        c, k = rnd.choice(slots)
        c[k] = copy(rnd.choice(ODD_VALUES))
    elif op == "drop" and slots:
        dicts = [(c, k) for c, k in slots if isinstance(c, dict)]
        if dicts:
            c, k = rnd.choice(dicts)
            del c[k]
    elif op == "add":
        target = rnd.choice([c for c, _ in slots if isinstance(c, dict)] or [obj])
        target[rnd.choice(["zz", "id", "t", "node", "extra", ""])] = copy(rnd.choice(ODD_VALUES))
    elif op == "tag":
        obj["t"] = rnd.choice([*ALL_TAGS, "", "Bogus", "ping", "Ping\x00", 5, None, b"Ping"])
    elif op == "huge" and slots:
        c, k = rnd.choice(slots)
        c[k] = _huge(rnd)
    elif op == "nest":
        target = rnd.choice([c for c, _ in slots if isinstance(c, dict)] or [obj])
        target[rnd.choice(["zz", "args", "labels", "node", "usage"])] = _nested(rnd)
    elif op == "replace":
        return copy(rnd.choice(ODD_VALUES))
    return obj


def mutate_body(body: bytes, rnd: random.Random) -> bytes:
    """One byte-level mutation of an encoded body (flips, cuts, splices, a bad head byte)."""
    op = rnd.choice(["flip", "flip", "truncate", "append", "prepend", "splice", "insert", "head"])
    b = bytearray(body)
    if op == "flip" and b:
        for _ in range(rnd.randint(1, 8)):
            i = rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)
    elif op == "truncate" and b:
        del b[rnd.randrange(len(b)):]
    elif op == "append":
        b += rnd.randbytes(rnd.randint(1, 16))
    elif op == "prepend":
        b[:0] = rnd.randbytes(rnd.randint(1, 4))
    elif op == "splice":
        b += body
    elif op == "insert" and b:
        i = rnd.randrange(len(b))
        b[i:i] = rnd.randbytes(rnd.randint(1, 8))
    elif op == "head" and b:
        b[0] = rnd.choice([0x80, 0x90, 0xC0, 0xC1, 0xDE, 0xDF, 0xDC, 0xA0, 0xFF, 0x00])
    return bytes(b)


def mutate_frames(frames: list, rnd: random.Random) -> list:
    """One mutation of the frame list (version frame, order, count, payload)."""
    op = rnd.choice(["version", "version", "noversion", "swap", "dup", "payload", "payload",
                     "extra", "empty", "only"])
    v, body = frames[0], frames[1]
    if op == "version":
        return [rnd.choice([b"", b"SPEAR/0", b"SPEAR/1", b"spear/1", b"SPEAR/1\x00", b"SPEAR/10",
                            rnd.randbytes(7), b"SPEAR/1" * 1000]), *frames[1:]]
    if op == "noversion":
        return frames[1:]
    if op == "swap":
        return [body, v, *frames[2:]]
    if op == "dup":
        return [v, body, body]
    if op == "payload":
        size = rnd.choice([0, 1, 100, 1 << 16, 1 << 20, 1 << 20, 6 << 20] if rnd.random() < 0.1
                          else [0, 1, 7, 100, 1000])
        return [v, body, rnd.randbytes(size) if size < 4096 else bytes(size)]
    if op == "extra":
        return [v, body, *(rnd.randbytes(rnd.randint(0, 8)) for _ in range(rnd.randint(2, 4)))]
    if op == "empty":
        return [v, b""] if rnd.random() < 0.5 else [b"", b""]
    return [v]


# ------------------------------------------------------------------ frames behind findings

#: a Ping nested 5,000 arrays deep in an unknown field (RecursionError in msgspec)
DEEP_PING = [P.PROTOCOL, b"\x83\xa1t\xa4Ping\xa2id\x05\xa1x" + b"\x91" * 5000 + b"\xc0"]
#: GetNode whose node_id is a msgpack str holding bytes that are not UTF-8
BAD_UTF8_GETNODE = [P.PROTOCOL, b"\x83\xa1t\xa7GetNode\xa2id\x05\xa7node_id\xa2\xff\xfe"]
UNDECODABLE = {"deep-nesting": DEEP_PING, "invalid-utf8-string": BAD_UTF8_GETNODE}
