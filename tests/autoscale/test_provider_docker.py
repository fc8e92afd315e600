"""The docker provider against the real Docker Engine: a Spearlet container
joins a real SMS on loopback (host network), runs a wasm function, and is found
again by a new provider object; destroy removes it.

No registry is reachable here, so the image is made from the local
``spear-test/python`` (tests/images/build.sh) with this machine's Python and
this checkout bind-mounted read-only; deploy/docker/Dockerfile is the image for
real deployments. The image is tagged by a hash of what it is built from, so
it is built once per change.
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import uuid
from pathlib import Path

import pytest

from spear import Client, errors, protocol as P
from spear.autoscale.providers.base import NodeType, load
from spear.cluster import Cluster
from tests.helpers import ADD_WAT, wait_for

docker = pytest.importorskip("docker")
pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
BASE = "spear-test/python:latest"


def _engine():
    try:
        api = docker.from_env(timeout=30)
        api.ping()
        api.images.get(BASE)
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine here"
        pytest.skip(f"docker engine or {BASE} unavailable ({exc}); run .ci/setup-docker.sh")
    return api


#: this Python (a virtual environment's and, if it is one, the interpreter it was made
#: from) and this checkout, read-only, where the container expects them
VOLUMES = ",".join(f"{p}:{p}:ro" for p in dict.fromkeys((sys.prefix, sys.base_prefix))) \
    + f",{REPO}:/opt/spear:ro"


@pytest.fixture(scope="module")
def image():
    api = _engine()
    dockerfile = (f"FROM {BASE}\nENV PYTHONPATH=/opt/spear\n"
                  f'ENTRYPOINT ["{sys.executable}", "-P", "-m", "spear"]\n')
    tag = "spear-test/spearlet:" + hashlib.sha256(dockerfile.encode()).hexdigest()[:12]
    try:
        api.images.get(tag)
    except docker.errors.ImageNotFound:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(dockerfile)
            tar.addfile(info, io.BytesIO(dockerfile.encode()))
        buf.seek(0)
        api.images.build(fileobj=buf, custom_context=True, tag=tag, pull=False, rm=True)
    return tag


@pytest.fixture(scope="module")
def sms(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("asdocker"), spearlets=0)
    try:
        c.start(wait=30)
        yield c
    finally:
        c.stop()


def test_create_run_list_destroy(image, sms, arun):
    cluster = f"t-{uuid.uuid4().hex[:8]}"
    options = {"cluster": cluster, "image": image, "network": "host",
               "volumes": VOLUMES}
    provider = load("docker")(sms=sms.sms_addr, options=options)
    small = NodeType(name="small", provider="docker", cores=1.0, memory_mb=512)
    name = f"{cluster}-n1"
    handle = arun(provider.create(small, name))
    try:
        assert handle.provider == "docker" and handle.name == name and handle.ref
        with Client(sms.sms_addr, timeout=20) as c:
            nodes = wait_for(lambda: [n for n in c.nodes("ready") if n.name == name], 60,
                             "the container's Spearlet to join the SMS")
            assert nodes[0].labels.get("spear.node-type") == "small"
            assert nodes[0].labels.get("spear.owner") == "autoscaler"
            c.deploy(P.FunctionSpec(name="add", runtime="wasm", handler="add", artifact=ADD_WAT))
            r = c.invoke("add", args=[40, 2])
            assert r.ok and r.output == b"42" and r.info.node_id == nodes[0].node_id
        # a new provider object (the autoscaler restarted) finds the node by its label
        again = load("docker")(sms=sms.sms_addr, options={"cluster": cluster})
        found = arun(again.list())
        assert [(h.ref, h.name, h.node_type) for h in found] == [(handle.ref, name, "small")]
        arun(again.destroy(found[0]))
        assert arun(provider.list()) == []
        arun(provider.destroy(handle))  # idempotent
    finally:
        try:
            docker.from_env().containers.get(handle.ref).remove(force=True)
        except docker.errors.NotFound:
            pass


def test_no_engine_is_a_refusal():
    with pytest.raises(errors.Unavailable, match="engine unreachable"):
        load("docker")(options={"base_url": "unix:///nonexistent/docker.sock"})


def test_a_load_ramp_grows_containers_then_shrinks_back_to_min(image, sms, tmp_path):
    """The autoscaler with the docker provider: queued work makes it start Spearlet
    containers (one slot each), every execution succeeds, and idle ones are drained
    and removed down to ``min_nodes``; its containers are gone after shutdown."""
    from spear.config import AutoscalerConfig
    from tests.autoscale.test_local import Running, _owned

    cluster = f"t-{uuid.uuid4().hex[:8]}"
    options = {"cluster": cluster, "image": image, "network": "host",
               "env": "SPEAR_SPEARLET_MAX_CONCURRENCY=1",
               "volumes": VOLUMES}
    cfg = AutoscalerConfig(provider="docker", min_nodes=1, max_nodes=3, tick=0.2, up_ticks=2,
                           up_cooldown=1.0, down_cooldown=2.0, scale_down_idle_s=2.0,
                           protect_idle_s=4.0, node_cores=1.0, node_memory_mb=512,
                           data=str(tmp_path / "autoscaler"), options=options)
    api = docker.from_env()
    try:
        with Client(sms.sms_addr, timeout=30) as c, Running(cfg, sms.sms_addr) as run:
            wait_for(lambda: len(_owned(c, ("ready",))) == 1, 90, "min_nodes container ready")
            c.deploy(P.FunctionSpec(name="spin", runtime="wasm", handler="fib", artifact=ADD_WAT))
            ids = [c.submit("spin", args=[150_000_000]) for _ in range(8)]
            wait_for(lambda: len(_owned(c, ("ready",))) >= 2, 120, "more containers under load")
            results = [c.wait(eid, timeout=180) for eid in ids]
            assert [r.status for r in results] == ["succeeded"] * len(ids), \
                [(r.status, r.info.error) for r in results]
            assert len({r.info.node_id for r in results}) >= 2
            wait_for(lambda: len(_owned(c)) == 1, 120, "back to min_nodes after idle")
            assert sum(d.count for d in run.decisions if d.action == "scale_up") >= 2
    finally:
        left = api.containers.list(all=True, filters={"label": f"spear.autoscaler={cluster}"})
        for ctr in left:
            ctr.remove(force=True)
    assert left == [], "the autoscaler's shutdown left containers behind"
