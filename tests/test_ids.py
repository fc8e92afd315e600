"""Execution ids are UUIDv7: unguessable, unique, time-ordered (issue 13)."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from spear.errors import InvalidArgument
from spear.ids import MIN_PREFIX, IdMaker, is_uuid7, new_id, resolve


def test_ids_are_canonical_uuid7_and_ordered():
    ids = [new_id() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # time-ordered, also within one millisecond
    for s in ids[:: 997]:
        u = uuid.UUID(s)
        assert str(u) == s and u.version == 7 and u.variant == uuid.RFC_4122 and is_uuid7(s)


def test_ids_carry_the_time_and_74_unpredictable_bits():
    before = time.time_ns() // 1_000_000
    a, b = IdMaker()(), IdMaker()()
    after = time.time_ns() // 1_000_000
    ms = int(a.replace("-", "")[:12], 16)
    assert before <= ms <= after
    # two makers in the same millisecond share nothing but the time and fixed bits
    ra, rb = uuid.UUID(a).int & ((1 << 62) - 1), uuid.UUID(b).int & ((1 << 62) - 1)
    assert ra != rb


def test_a_forked_child_does_not_repeat_the_parents_ids():
    new_id()  # the parent holds random bytes it has not used yet
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(w, new_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 64).decode()
    parent = new_id()
    assert child[15:] != parent[15:]  # the random tails differ


class _NoScan(dict):
    """A pool that fails the test if it is scanned."""

    def __iter__(self):
        raise AssertionError("a whole id must not scan the pools")


def test_resolve_a_whole_id_without_a_scan_and_a_prefix_by_scanning():
    a, b = "01900000-0000-7000-8000-00000000000a", "01900000-0000-7001-8000-00000000000b"
    assert resolve(a, (_NoScan(),)) == a  # known or not: the caller looks it up
    assert resolve("e1", (_NoScan(e1=1),)) == "e1"  # held as it is
    pools = ({a: 1}, {b: 2})
    assert resolve("0190000000007001", pools) == b  # dashes where they belong, or none
    assert resolve("0190-0000-0000-7000", pools) == a
    assert resolve("01900000-0000-7001-8000-00000000000B".upper(), pools) == b
    assert resolve("nope", pools) == "nope" and resolve("0190ffff", pools) == "0190ffff"
    with pytest.raises(InvalidArgument, match="matches 2 executions"):
        resolve("01900000-0000", pools)
    with pytest.raises(InvalidArgument, match=f"at least {MIN_PREFIX} hex digits"):
        resolve("0190000", pools)
