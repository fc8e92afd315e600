"""What goes into the SMS core (events) and what comes out of it (instructions).

The daemon turns the world into events - a decoded message with the
caller's authenticated identity, a timer, the result of a store call - and
hands each to :meth:`spear.sms.core.SMSCore.handle` with the time. The core
answers with instructions, which the daemon carries out in order. A
:class:`Persist` or :class:`Load` carries a token: the daemon performs it at
once and feeds the outcome back as :class:`Persisted` / :class:`Loaded` with
that token before it carries out anything else, so the core's view of the
store is always current.

Inside the core, code that needs the store is written as a generator that
yields a :class:`Persist` or :class:`Load` (token 0) and receives the outcome
(an error text, "" on success; or the values read).
"""

from __future__ import annotations

from typing import Any, Sequence

import msgspec

# ---------------------------------------------------------------- events


class Received(msgspec.Struct, frozen=True):
    """A decoded message from a peer: its routing id, its CURVE key and role
    (both "" on an open SMS), the message and its raw payload frame."""

    ident: bytes
    key: str
    role: str
    msg: Any
    payload: bytes | None = None


class Tick(msgspec.Struct, frozen=True):
    """Housekeeping (a few times per heartbeat interval): node timeouts.

    ``lag``: how much later than asked the loop ran (a stall of the SMS
    itself when over :data:`spear.sms.core.STALL`). ``store_error``: the
    store's state after the daemon probed it ("" when writes succeed).
    """

    lag: float = 0.0
    store_error: str = ""


class Upkeep(msgspec.Struct, frozen=True):
    """The fast pass (every few tens of milliseconds): waiters, queues, batched writes."""


class Commit(msgspec.Struct, frozen=True):
    """The group commit a :class:`CommitSoon` asked for (once per loop pass)."""


class Undelivered(msgspec.Struct, frozen=True):
    """A :class:`Send` of ``msg`` could not be handed to the socket."""

    msg: Any


class Persisted(msgspec.Struct, frozen=True):
    """Outcome of the :class:`Persist` with ``token``: ``error`` is "" if it was written."""

    token: int
    error: str = ""


class Loaded(msgspec.Struct, frozen=True):
    """Outcome of the :class:`Load` with ``token``: one value (or None) per key."""

    token: int
    values: Sequence[bytes | None] = ()


class Stopping(msgspec.Struct, frozen=True):
    """The SMS shuts down: write what is still in memory."""


# ---------------------------------------------------------------- instructions


class Send(msgspec.Struct, frozen=True):
    """Send ``msg`` (and ``payload`` as a raw frame) to the peer at routing id ``ident``."""

    ident: bytes
    msg: Any
    payload: bytes | None = None


class Persist(msgspec.Struct, frozen=True):
    """Write ``puts`` and delete ``deletes`` in one batch (``sync``: flushed to disk
    before it returns); answer with :class:`Persisted`."""

    puts: Sequence[tuple[bytes, bytes]] = ()
    deletes: Sequence[bytes] = ()
    sync: bool = False
    token: int = 0


class Load(msgspec.Struct, frozen=True):
    """Read ``keys`` (cold records: archived executions, artifacts); answer with :class:`Loaded`."""

    keys: Sequence[bytes] = ()
    token: int = 0


class CommitSoon(msgspec.Struct, frozen=True):
    """Feed a :class:`Commit` once the messages already received are handled
    (one synced write for every async submission of the loop pass)."""


class Dropped(msgspec.Struct, frozen=True):
    """A message was dropped as a protocol error (a node message from no registered node)."""


Event = Received | Tick | Upkeep | Commit | Undelivered | Persisted | Loaded | Stopping
Instruction = Send | Persist | Load | CommitSoon | Dropped


def unavailable_text(store_error: str) -> str:
    """The message of the UNAVAILABLE refusal while writes fail."""
    return (f"SMS storage is failing ({store_error}); nothing new is accepted "
            "until writes succeed again")
