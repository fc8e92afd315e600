"""bench/ab.py and bench/seq_cpu.py leave no daemon behind when their start is
interrupted (Ctrl-C, a node that never registers): the daemons run in sessions
of their own, so no Ctrl-C reaches them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import ab, seq_cpu  # noqa: E402
from bench.harness import floor  # noqa: E402
from bench.harness.session import Session  # noqa: E402


class FakeCluster:
    stopped = 0

    def stop(self) -> None:
        FakeCluster.stopped += 1


@pytest.fixture
def interrupted_start(monkeypatch):
    """Session.start_cluster starts a (fake) cluster, then is interrupted."""
    FakeCluster.stopped = 0

    def start_cluster(self):
        self.cluster = FakeCluster()
        raise KeyboardInterrupt

    monkeypatch.setattr(Session, "start_cluster", start_cluster)


def test_ab_stops_a_cluster_whose_start_was_interrupted(interrupted_start):
    with pytest.raises(KeyboardInterrupt):
        ab.start({}, ["b-noop"])
    assert FakeCluster.stopped == 1


def test_seq_cpu_stops_a_cluster_whose_start_was_interrupted(interrupted_start):
    with pytest.raises(KeyboardInterrupt):
        seq_cpu.spear(["b-noop"], 1, False, False)
    assert FakeCluster.stopped == 1


def test_seq_cpu_stops_a_floor_whose_start_was_interrupted(monkeypatch):
    stopped = []

    def start(self):
        raise KeyboardInterrupt  # after the echo server, before the broker

    monkeypatch.setattr(floor.Floor, "start", start)
    monkeypatch.setattr(floor.Floor, "stop", lambda self: stopped.append(self))
    monkeypatch.setattr(seq_cpu, "Floor", floor.Floor)
    with pytest.raises(KeyboardInterrupt):
        seq_cpu.floor_2hop(1)
    assert len(stopped) == 1


def test_ab_refuses_an_environment_that_is_not_an_object_of_strings(capsys):
    for bad in ("nope", '{"SPEAR_NO_BATCH": 1}', "[1]"):
        with pytest.raises(SystemExit) as ei:
            ab.main(["--b", bad])
        assert ei.value.code == 2
        assert "--b" in capsys.readouterr().err
