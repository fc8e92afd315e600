"""Fast unique ids: a random per-process prefix and a counter.

``uuid4().hex`` costs ~5 µs; this costs a fraction of that and is still
unique across processes and restarts (64 random bits per process).
"""

from __future__ import annotations

import itertools
import os


class IdMaker:
    """32-hex-character ids: 16 random hex digits, then a 16-digit counter."""

    def __init__(self) -> None:
        self.prefix = os.urandom(8).hex()
        self._count = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}{next(self._count):016x}"


new_id = IdMaker()
