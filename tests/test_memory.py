"""spear.memory: big buffers reuse heap pages; freed pages go back to the system, at most every PERIOD seconds."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
import types

import psutil
import pytest

from spear import memory


def test_trim_runs_at_most_once_per_period(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "_last", float("-inf"))
    libc = types.SimpleNamespace(malloc_trim=lambda pad: calls.append(pad) or 1)
    monkeypatch.setattr(memory, "_glibc", lambda: libc)
    assert memory.trim(now=100.0) is True
    assert memory.trim(now=100.0 + memory.PERIOD / 2) is False  # too soon: not called
    assert memory.trim(now=100.0 + memory.PERIOD) is True
    assert calls == [0, 0]


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library to load")
def test_a_burst_of_big_buffers_is_given_back(monkeypatch):
    """What glibc keeps after big frees in its heap is returned by a trim."""
    monkeypatch.setattr(memory, "_last", float("-inf"))
    if memory._glibc() is None:
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


def test_tune_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.tune() is False


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library to load")
def test_after_tune_big_buffers_reuse_their_pages():
    """Three live 1 MiB buffers (a daemon's input, output and a copy), freed and
    allocated again and again, page-fault only the first time: without tune glibc
    returns the heap's top on every free (it then holds more than twice its
    raised threshold). Run in a fresh interpreter: the thresholds are process-wide."""
    if memory._glibc() is None:
        pytest.skip("not glibc")
    code = (
        "import resource\n"
        "from spear import memory\n"
        "assert memory.tune()\n"
        "def burst():\n"
        "    a = bytes(1 << 20); b = bytes(1 << 20); c = bytes(1 << 20)\n"
        "for _ in range(4): burst()\n"
        "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(200): burst()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # returned and faulted back: ~70 pages a burst, 14000 in all (measured without tune)
    assert int(out.stdout) < 1000, out.stdout
