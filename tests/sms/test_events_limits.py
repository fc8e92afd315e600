"""Event subscriptions: one key can never take everyone else's slots."""

from __future__ import annotations

from spear.sms.subscriptions import EventLog


def _log():
    sent = []
    return EventLog(lambda ident, ev: sent.append((ident, ev)) or True), sent


def test_one_key_cannot_evict_other_keys_subscriptions():
    log, sent = _log()
    log.max_subscribers = 64
    log.subscribe(b"good", 1, 0, owner="good-key")
    for i in range(10_000):  # a viewer opening subscriptions as fast as it can
        log.subscribe(b"evil-%d" % (i % 50), i, 0, owner="evil-key")
    assert (b"good", 1) in log.subscribers
    assert sum(1 for o in log.subscribers.values() if o == "evil-key") == log.max_per_owner
    log.publish("node", "n1", "ready", 1.0)
    assert any(ident == b"good" for ident, _ in sent)


def test_many_keys_fill_the_table_and_the_biggest_holder_pays():
    log, _ = _log()
    log.max_subscribers = 8
    log.max_per_owner = 4
    for i in range(4):
        log.subscribe(b"a", i, 0, owner="A")
    for i in range(3):
        log.subscribe(b"b", i, 0, owner="B")
    log.subscribe(b"c", 0, 0, owner="C")
    assert len(log.subscribers) == 8
    log.subscribe(b"d", 0, 0, owner="D")  # full: A holds the most, A's oldest goes
    owners = list(log.subscribers.values())
    assert owners.count("A") == 3 and owners.count("B") == 3 and "C" in owners and "D" in owners
    assert (b"a", 0) not in log.subscribers


def test_unsubscribe_frees_the_owners_slot_and_resubscribe_is_idempotent():
    log, _ = _log()
    log.max_per_owner = 2
    log.subscribe(b"x", 1, 0, owner="K")
    log.subscribe(b"x", 1, 0, owner="K")
    log.subscribe(b"x", 2, 0, owner="K")
    log.unsubscribe(b"x", 1)
    log.subscribe(b"x", 3, 0, owner="K")
    assert set(log.subscribers) == {(b"x", 2), (b"x", 3)}
    assert log._owned["K"] == 2
