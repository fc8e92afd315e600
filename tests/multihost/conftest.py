"""Fixtures of the multi-host tests: a private subnet of network namespaces.

The lab needs root and ``ip netns``. Without them the tests are skipped with
the reason, except in CI (``CI=true``), where they must run: there a missing
prerequisite is a failure, not a skip.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

import pytest

from .lab import MultiHost, NetLab, lab_problem

_problem: list = []


def require_lab() -> None:
    """Skip (locally) or fail (CI) when this machine cannot build a lab."""
    if not _problem:
        _problem.append(lab_problem())
    why = _problem[0]
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture
def multihost(tmp_path) -> Iterator[Callable[..., MultiHost]]:
    """``multihost(["sms", "h1", "h2"], **MultiHost kwargs)``: a lab with an SMS on
    ``sms`` and a Spearlet on every other host, started and ready.

    Teardown, also after a failure: every daemon and every process left in a
    host is killed, every namespace and link is removed (and checked gone).
    """
    require_lab()
    made: list[tuple[NetLab, MultiHost | None]] = []

    def make(hosts: list[str] | None = None, *, start: bool = True, **kw) -> MultiHost:
        hosts = hosts or ["sms", "h1", "h2"]
        assert hosts[0] == "sms"
        lab = NetLab(hosts)
        made.append((lab, None))
        lab.up()
        mh = MultiHost(lab, tmp_path / f"mh{len(made)}", **kw)
        made[-1] = (lab, mh)
        if start:
            mh.start()
        return mh

    try:
        yield make
    finally:
        leftovers = []
        for lab, mh in made:
            try:
                if mh is not None:
                    mh.stop()
            finally:
                lab.close()
                leftovers += lab.leftovers()
        if leftovers:
            # namespace teardown is asynchronous in the kernel for links only;
            # the namespace names themselves must be gone at once
            pytest.fail(f"lab not cleaned up: {leftovers}", pytrace=False)
