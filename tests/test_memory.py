"""spear.memory: freed heap pages go back to the system, at most every PERIOD seconds."""

from __future__ import annotations

import ctypes.util
import os

import psutil
import pytest

from spear import memory


def test_trim_runs_at_most_once_per_period(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "_last", float("-inf"))
    monkeypatch.setattr(memory, "_function", lambda: lambda pad: calls.append(pad) or 1)
    assert memory.trim(now=100.0) is True
    assert memory.trim(now=100.0 + memory.PERIOD / 2) is False  # too soon: not called
    assert memory.trim(now=100.0 + memory.PERIOD) is True
    assert calls == [0, 0]


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library to load")
def test_a_burst_of_big_buffers_is_given_back(monkeypatch):
    """What glibc keeps after big frees in its heap is returned by a trim."""
    monkeypatch.setattr(memory, "_last", float("-inf"))
    if memory._function() is None:
        pytest.skip("this C library has no malloc_trim (not glibc)")
    me = psutil.Process(os.getpid())
    # one big free raises glibc's mmap threshold: later 1 MiB buffers come from the heap
    big = bytearray(8 << 20)
    del big
    # interleaved so that frees leave holes below the heap's top, as a daemon's do
    keep, drop = [], []
    for i in range(64):
        (keep if i % 8 == 7 else drop).append(bytearray(1 << 20))
    before = me.memory_info().rss
    drop.clear()
    memory.trim()
    after = me.memory_info().rss
    del keep
    # 56 MiB were freed; most of it must be back with the system after the trim
    assert before - after > 16 << 20, (before >> 20, after >> 20)
