"""Event subscriptions of the SMS (spear/sms/events.py) under a flood, found by the wire fuzz."""

from __future__ import annotations

from spear import protocol as P
from tests.helpers import dealer, request


def test_subscriptions_are_bounded(tsms):
    """spear/sms/events.py keeps at most ``max_subscribers`` (1024) subscriptions.

    A peer that sends 3,000 Subscribe and disconnects never unsubscribes; the
    oldest entries are dropped so every later event is not fanned out 3,000 times.
    """
    s = dealer(tsms.address)
    try:
        for i in range(3000):
            s.send_multipart(P.encode(P.Subscribe(id=100 + i, since=2**62)))
        assert isinstance(request(s, P.Ping(id=1)), P.Pong)
    finally:
        s.close(0)
    n = tsms.call(lambda: len(tsms.sms.events.subscribers))
    assert n <= 1024, f"{n} subscriptions kept for a peer that is gone"
