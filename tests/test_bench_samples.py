"""The codec benchmarks' sample table keeps up with the wire protocol.

``bench/test_codec.py`` benches one instance of every ``protocol.Message``
type from ``bench/samples.py``; a type added to the union without a sample
would silently go unmeasured, so this fails instead.
"""

from __future__ import annotations

import pytest

from bench.samples import PAYLOAD_CARRIERS, SAMPLES, message_types
from spear import protocol as P


def test_every_message_type_has_a_sample():
    missing = sorted(t.__name__ for t in message_types() if t not in SAMPLES)
    assert not missing, f"add a sample to bench/samples.py for: {', '.join(missing)}"


def test_no_sample_of_a_type_outside_the_union():
    stale = sorted(t.__name__ for t in SAMPLES if t not in message_types())
    assert not stale, f"bench/samples.py has samples of non-Message types: {', '.join(stale)}"


def test_payload_carriers_are_messages():
    assert set(PAYLOAD_CARRIERS) <= set(message_types())


@pytest.mark.parametrize("kind", message_types(), ids=lambda t: t.__name__)
def test_sample_is_valid_on_the_wire(kind):
    msg = SAMPLES[kind]()
    assert type(msg) is kind
    got, payload = P.decode([bytes(f) for f in P.encode(msg)])
    assert got == msg and payload is None
