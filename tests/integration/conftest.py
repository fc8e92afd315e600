"""Fixtures shared by the integration tests (real daemons as subprocesses).

Plain helpers are in tests/helpers.py (polling, the CLI, ``add_spec``) and
tests/integration/curve.py (CURVE configs per role).
"""

from __future__ import annotations

import pytest

from spear.mesh.security import keygen

from .curve import KEY_HOLDERS


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple]:
    """name -> (public key file, secret key file) for every holder of curve.KEY_HOLDERS."""
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name in KEY_HOLDERS:
        pub, sec, _ = keygen(d, name)
        out[name] = (pub, sec)
    return out
