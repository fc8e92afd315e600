"""Example Python handlers for the ``process`` runtime.

Deploy one with ``handler="handlers:upper"`` and ``workdir`` set to this
directory (or ``env={"PYTHONPATH": "<this directory>"}``). Spear's pyworker
calls ``function(data: bytes)`` and sends back what it returns: ``bytes`` as
is, ``str`` as UTF-8, ``None`` as empty output, anything else as JSON. An
exception becomes a ``FunctionError`` and the worker keeps serving.
"""

from __future__ import annotations

import json
import sys


def noop(data: bytes) -> bytes:
    """Do nothing: the baseline for measuring invocation overhead."""
    return b""


def echo(data: bytes) -> bytes:
    """Return the input unchanged."""
    return data


def upper(data: bytes) -> str:
    """Upper-case UTF-8 text."""
    return data.decode("utf-8").upper()


def _fib(n: int) -> int:
    return n if n < 2 else _fib(n - 1) + _fib(n - 2)


def fib(data: bytes) -> dict:
    """CPU-bound on purpose: naive recursive Fibonacci of the number in the input."""
    n = int(data or b"20")
    if not 0 <= n <= 40:
        raise ValueError(f"n must be between 0 and 40, got {n}")
    return {"n": n, "fib": _fib(n)}


def wordcount(data: bytes) -> dict:
    """Count words in UTF-8 text; logs a line to stderr (shown as the call's logs)."""
    counts: dict[str, int] = {}
    for word in data.decode("utf-8").split():
        counts[word] = counts.get(word, 0) + 1
    print(f"wordcount: {len(counts)} distinct words", file=sys.stderr)
    return counts


def add(data: bytes, *args) -> str:
    """Sum the JSON numbers in the input plus any invocation args."""
    numbers = json.loads(data) if data.strip() else []
    return json.dumps(sum(numbers) + sum(args))
