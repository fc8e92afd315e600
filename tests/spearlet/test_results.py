"""ResultBuffer: the Spearlet's store of results sent to the SMS and not yet confirmed."""

from __future__ import annotations

import logging

from spear import protocol as P
from spear.spearlet.results import ResultBuffer


def result(eid: str, out_size: int = 0) -> tuple[P.Result, bytes]:
    return (P.Result(id=1, execution=P.ExecutionInfo(execution_id=eid, function="f",
                                                     status="succeeded")),
            bytes(out_size))


def test_buffer_keeps_results_in_order_until_acked():
    buf = ResultBuffer()
    for eid in ("a", "b", "c"):
        buf.add(*result(eid, 10))
    assert buf.pending() == ["a", "b", "c"]
    assert buf.bytes == 3 * (256 + 10)
    buf.ack(["b", "zzz"])  # an id it does not hold is ignored
    assert buf.pending() == ["a", "c"]
    assert buf.bytes == 2 * (256 + 10)
    buf.ack(["a", "c"])
    assert len(buf) == 0 and buf.bytes == 0


def test_buffer_replaces_a_result_sent_twice():
    buf = ResultBuffer()
    buf.add(*result("a", 100))
    buf.add(*result("a", 5))
    assert len(buf) == 1 and buf.bytes == 256 + 5


def test_buffer_drops_the_oldest_beyond_its_count(caplog):
    buf = ResultBuffer(max_results=3)
    with caplog.at_level(logging.WARNING, logger="spear.spearlet"):
        for i in range(5):
            buf.add(*result(f"e{i}"))
    assert buf.pending() == ["e2", "e3", "e4"]
    assert buf.dropped == 2
    # one warning a second at most, naming the first execution dropped
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "e0" in warnings[0].getMessage()


def test_buffer_drops_the_oldest_beyond_its_bytes():
    buf = ResultBuffer(max_bytes=3 * 1000)
    buf.add(*result("a", 500))
    buf.add(*result("b", 500))
    buf.add(*result("c", 1500))  # 756 + 756 + 1756 > 3000: "a" goes
    assert buf.pending() == ["b", "c"] and buf.dropped == 1
    assert buf.bytes == (256 + 500) + (256 + 1500)


def test_buffer_never_keeps_an_id_a_heartbeat_could_not_carry():
    buf = ResultBuffer()
    buf.add(*result("x" * 129))
    buf.add(*result("y" * 128))
    assert buf.pending() == ["y" * 128]
    # and a heartbeat listing what it keeps is valid on the wire
    hb = P.Heartbeat(id=1, node_id="n", usage=P.Usage(), session=1, finished=buf.pending())
    assert P.decode(P.encode(hb))[0] == hb


def test_buffer_pending_is_bounded():
    buf = ResultBuffer()
    for i in range(100):
        buf.add(*result(f"{i:03d}"))
    assert buf.pending(limit=10) == [f"{i:03d}" for i in range(10)]
    assert len(buf.pending(max_chars=50)) < 15


def test_buffer_resends_only_what_was_sent_before_the_heartbeat():
    """The ack of heartbeat H lists what the SMS lacked when it answered H; a
    result (re)sent after H is on its way and must not be sent once more."""
    buf = ResultBuffer()
    buf.add(*result("early"))
    h1 = buf.mark()
    buf.add(*result("late"))  # sent after h1
    again = buf.to_resend(["early", "late", "unknown"], h1)
    assert [k.msg.execution.execution_id for k in again] == ["early"]
    # the ack of the same heartbeat again (or of an older one): nothing more
    assert buf.to_resend(["early", "late"], h1) == []
    h2 = buf.mark()
    assert sorted(k.msg.execution.execution_id for k in buf.to_resend(["early", "late"], h2)) \
        == ["early", "late"]
