"""ResultBuffer: results of SMS executions sent and not yet confirmed.

Every heartbeat lists them in ``finished``; its ack says which the SMS has
(forgotten here) and which it lacks (sent again). So a result sent into a
link that then breaks - the SMS down, a partition, a socket reset - still
reaches the SMS once the node is registered again. Pure state: the clock
comes in as ``now``.
"""

from __future__ import annotations

import collections
import logging

from .. import protocol as P

log = logging.getLogger("spear.spearlet")

#: longest execution id a heartbeat may list (protocol.ExecIdList)
MAX_LISTED_ID = 128


class Kept:
    """One result waiting for the SMS's confirmation."""

    __slots__ = ("msg", "payload", "size", "sent_seq")

    def __init__(self, msg: P.Result, payload, size: int, sent_seq: int) -> None:
        self.msg = msg
        self.payload = payload
        self.size = size
        self.sent_seq = sent_seq


class ResultBuffer:
    """Results sent to the SMS and not yet confirmed by it, oldest first.

    Bounded by count and by bytes (output payloads included): beyond either
    bound the oldest is dropped, counted in ``dropped`` and logged (at most
    one warning a second). ``sent_seq`` orders sends against heartbeats: a
    result (re)sent after heartbeat H is not sent again because H's ack
    lists it as missing (the SMS answered H before that send reached it).
    """

    def __init__(self, max_results: int = 50_000, max_bytes: int = 256 << 20) -> None:
        self.max_results = max_results
        self.max_bytes = max_bytes
        self.items: collections.OrderedDict[str, Kept] = collections.OrderedDict()
        self.bytes = 0
        self.dropped = 0
        self.seq = 0  # bumped by every (re)send and every heartbeat
        self._warned_at = float("-inf")

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, eid: str) -> bool:
        return eid in self.items

    def add(self, msg: P.Result, payload, now: float = 0.0) -> None:
        """Keep ``msg`` (about to be sent) until the SMS confirms it."""
        eid = msg.execution.execution_id
        if len(eid) > MAX_LISTED_ID:
            return  # could not be listed in a heartbeat (the SMS never makes such ids)
        old = self.items.pop(eid, None)
        if old is not None:
            self.bytes -= old.size
        size = 256 + (len(payload) if payload is not None else 0)
        self.seq += 1
        self.items[eid] = Kept(msg, payload, size, self.seq)
        self.bytes += size
        while self.items and (len(self.items) > self.max_results or self.bytes > self.max_bytes):
            old_id, old = self.items.popitem(last=False)
            self.bytes -= old.size
            self.dropped += 1
            if now - self._warned_at >= 1.0:
                self._warned_at = now
                log.warning("dropped the result of execution %s: %d results (%d bytes) wait for "
                            "the SMS to confirm them, bounds %d / %d bytes (%d dropped so far)",
                            old_id, len(self.items), self.bytes, self.max_results,
                            self.max_bytes, self.dropped,
                            extra={"execution_id": old_id,
                                   "trace_id": old.msg.execution.trace_id})

    def mark(self) -> int:
        """A heartbeat is sent now: the sequence number its ack is judged by."""
        self.seq += 1
        return self.seq

    def pending(self, limit: int = 20_000, max_chars: int = 1 << 20) -> list[str]:
        """Ids to list in the next heartbeat: the oldest, bounded in count and size."""
        out: list[str] = []
        chars = 0
        for eid in self.items:
            if len(out) >= limit or chars > max_chars:
                break
            out.append(eid)
            chars += len(eid) + 2
        return out

    def ack(self, eids) -> None:
        """The SMS has these results (or no longer knows them): forget them."""
        for eid in eids:
            kept = self.items.pop(eid, None)
            if kept is not None:
                self.bytes -= kept.size

    def to_resend(self, eids, heartbeat_seq: int) -> list[Kept]:
        """Of ``eids`` (the SMS lacks them as of the heartbeat ``heartbeat_seq``),
        the ones last sent before that heartbeat; marked as sent now."""
        out = []
        for eid in eids:
            kept = self.items.get(eid)
            if kept is not None and kept.sent_seq < heartbeat_seq:
                self.seq += 1
                kept.sent_seq = self.seq
                out.append(kept)
        return out
