"""Artifacts by reference: stored once on the SMS, named by SHA-256, sent only when missing.

Against a real embedded cluster (SMS + one Spearlet, real wasmtime): the
client names a large artifact alone first, and the bytes follow only when
the SMS does not store them.
"""

from __future__ import annotations

import hashlib

import pytest

from spear import Client, errors
from spear import protocol as P
from spear.client.api import BY_REFERENCE
from spear.cluster import Cluster
from tests.helpers import ADD_WAT, FAST_HB, dealer, request

pytestmark = pytest.mark.timeout(120)


def big_wat(tag: str) -> bytes:
    """examples/add.wat padded past BY_REFERENCE with a comment (still the same module)."""
    return ADD_WAT + b"\n;; " + tag.encode() + b"x" * BY_REFERENCE + b"\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("artifacts") / "cluster", spearlets=1, store="memory",
                **FAST_HB)
    try:
        c.start(wait=30)
        yield c
    finally:
        c.stop()


def spec(name: str, **kw) -> P.FunctionSpec:
    return P.FunctionSpec(name=name, runtime="wasm", handler="add", **kw)


def test_a_stored_artifact_is_named_alone_and_a_new_one_is_sent(cluster):
    art = big_wat("one")
    sha = hashlib.sha256(art).hexdigest()
    with Client(cluster.sms_addr, timeout=30) as c:
        c.deploy(spec("ref-a", artifact=art))  # new: named alone, refused, then sent
        c.deploy(spec("ref-b", artifact_sha256=sha))  # no bytes at all
        assert c.invoke("ref-b", args=[2, 3]).output == b"5"
        assert c.function("ref-b").artifact_sha256 == sha
        # a deploy naming an artifact nobody stored is refused, clearly
        with pytest.raises(errors.NotFound, match="not stored"):
            c.deploy(spec("ref-c", artifact_sha256="ab" * 32))
        # bytes that do not match the name they come with are refused
        with pytest.raises(errors.InvalidArgument, match="SHA-256"):
            c.deploy(spec("ref-d", artifact=art, artifact_sha256="cd" * 32))


def test_the_last_function_removed_takes_its_artifact_along(cluster):
    art = big_wat("two")
    sha = hashlib.sha256(art).hexdigest()
    with Client(cluster.sms_addr, timeout=30) as c:
        c.deploy(spec("gc-a", artifact=art))
        c.deploy(spec("gc-b", artifact_sha256=sha))
        c.remove("gc-a")
        c.deploy(spec("gc-c", artifact_sha256=sha))  # gc-b still uses it
        c.remove("gc-b")
        c.remove("gc-c")
        with pytest.raises(errors.NotFound, match="not stored"):
            c.deploy(spec("gc-d", artifact_sha256=sha))


def test_a_raw_deploy_by_reference_of_an_unknown_artifact_gets_not_found(cluster):
    sock = dealer(cluster.sms_addr)
    try:
        bare = spec("raw", artifact_sha256="ef" * 32)
        reply = request(sock, P.DeployFunction(id=7, spec=bare))
        assert isinstance(reply, P.ErrorReply) and reply.code == "NOT_FOUND"
        assert "ef" * 32 in reply.message
    finally:
        sock.close(0)
