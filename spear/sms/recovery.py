"""What the SMS reads from its store when it starts, handed to the core whole.

The core never reads the store itself: the daemon calls :func:`read` once,
and :class:`spear.sms.core.SMSCore` rebuilds its state from the records.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..store import Store

#: store keys of each kind of record
NODEKEY_PREFIX = b"nodekey/"  # node id -> the credential it is bound to
NODE_PREFIX = b"node/"
FN_PREFIX = b"fn/"
ART_PREFIX = b"artifact/"
EX_PREFIX = b"ex/"
COUNTS_KEY = b"meta/counts"
SEQ_KEY = b"meta/event_seq"


@dataclass
class Recovered:
    """Raw records by kind, as (key, value) pairs; empty for a new SMS."""

    nodekeys: list[tuple[bytes, bytes]] = field(default_factory=list)
    nodes: list[tuple[bytes, bytes]] = field(default_factory=list)
    functions: list[tuple[bytes, bytes]] = field(default_factory=list)
    executions: list[tuple[bytes, bytes]] = field(default_factory=list)
    counts: bytes | None = None
    event_seq: bytes | None = None


def read(store: Store) -> Recovered:
    """Every record the core recovers from (artifacts stay on disk: read when fetched)."""
    return Recovered(
        nodekeys=list(store.scan(NODEKEY_PREFIX)),
        nodes=list(store.scan(NODE_PREFIX)),
        functions=list(store.scan(FN_PREFIX)),
        executions=list(store.scan(EX_PREFIX)),
        counts=store.get(COUNTS_KEY),
        event_seq=store.get(SEQ_KEY),
    )
