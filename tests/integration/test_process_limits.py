"""Process functions that misbehave, against a real SMS and Spearlet (issue 15).

A function writing 96 MiB (more than the 64 MiB payload cap) ends
RESOURCE_EXHAUSTED, invoked directly and through the SMS, and the node keeps
serving; a Spearlet killed with SIGKILL leaves its functions' processes
running, and the same node started again ends them before it serves.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from spear import Client, protocol as P
from spear.cluster import Cluster
from tests.helpers import gone

HELPERS = Path(__file__).resolve().parents[1] / "runtimes" / "helpers"
MIB = 1 << 20


@pytest.fixture(scope="module")
def shared():
    """The helpers where the sandbox user can read them, and a directory it can write."""
    d = tempfile.mkdtemp(prefix="spear-limits-it-")
    os.chmod(d, 0o755)
    shutil.copy(HELPERS / "rogue.py", d)
    os.chmod(os.path.join(d, "rogue.py"), 0o644)
    os.mkdir(os.path.join(d, "out"))
    os.chmod(os.path.join(d, "out"), 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _cluster(path: Path, shared: str, extra: str = "") -> Cluster:
    cfg = path / "spear.toml"
    path.mkdir(parents=True, exist_ok=True)
    cfg.write_text("[runtimes.docker]\nbase_url = \"unix:///nonexistent/docker.sock\"\n" + extra)
    return Cluster(path / "cluster", spearlets=1, config=str(cfg), heartbeat_interval=0.2,
                   heartbeat_timeout=1.0, host_roots=[shared])


def _big(name: str, shared: str) -> list[P.FunctionSpec]:
    return [
        P.FunctionSpec(name=f"{name}-oneshot", runtime="process",
                       command=["head", "-c", str(96 * MIB), "/dev/zero"]),
        P.FunctionSpec(name=f"{name}-handler", runtime="process", handler="rogue:big",
                       workdir=shared),
    ]


def test_output_over_the_cap_is_resource_exhausted_direct_and_via_the_sms(tmp_path, shared):
    with _cluster(tmp_path, shared) as c:
        c.start(wait=30)
        addr = c.spearlet_addrs[0]
        with Client(c.sms_addr, timeout=30) as cl:
            for spec in _big("direct", shared):
                cl.deploy(spec, node=addr)
                r = cl.invoke(spec.name, b"96", node=addr, timeout=30)
                assert r.status == "failed" and r.info.error.code == "RESOURCE_EXHAUSTED", r.info
                assert "64 MiB" in r.info.error.message
            for spec in _big("sms", shared):
                cl.deploy(spec)
                r = cl.invoke(spec.name, b"96", timeout=30)
                assert r.status == "failed" and r.info.error.code == "RESOURCE_EXHAUSTED", r.info
                eid = cl.submit(spec.name, b"96", timeout=30)
                r = cl.wait(eid, timeout=30)
                assert r.status == "failed" and r.info.error.code == "RESOURCE_EXHAUSTED", r.info
            # the node keeps serving, big outputs under the cap included
            cl.deploy(P.FunctionSpec(name="ten", runtime="process", handler="rogue:big",
                                     workdir=shared))
            r = cl.invoke("ten", b"10", timeout=30)
            assert r.ok and len(r.output) == 10 * MIB
            assert cl.invoke("direct-handler", b"1", node=addr).output == b"x" * MIB


def test_a_restarted_spearlet_ends_what_its_killed_self_left(tmp_path, shared):
    if os.geteuid() != 0 and os.environ.get("CI") == "true":
        pytest.fail("must run as root in CI (the sandbox user, cgroups)")
    out = Path(shared) / "out"
    with _cluster(tmp_path, shared) as c:
        c.start(wait=30)
        addr = c.spearlet_addrs[0]
        with Client(c.sms_addr, timeout=30) as cl:
            sleeper = out / "sleeper.pid"
            cl.deploy(P.FunctionSpec(
                name="sleeper", runtime="process", limits=P.Limits(timeout=600),
                command=["sh", "-c", f"echo $$ > {sleeper}; exec sleep 300"]), node=addr)
            cl.deploy(P.FunctionSpec(name="escape", runtime="process", handler="rogue:escape",
                                     workdir=shared), node=addr)
            cl.deploy(P.FunctionSpec(name="pid", runtime="process", handler="rogue:pid",
                                     workdir=shared), node=addr)
            eid = cl.submit("sleeper", node=addr)
            daemon = out / "daemon.pid"
            daemon.touch()
            daemon.chmod(0o666)
            assert cl.invoke("escape", str(daemon).encode(), node=addr).output == b"escaped"
            worker = int(cl.invoke("pid", node=addr).output)
            deadline = time.monotonic() + 10
            while not sleeper.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            pids = [int(sleeper.read_text()), int(daemon.read_text()), worker]
            assert cl.execution(eid, node=addr).status == "running"
        records = c.data / "spearlet-1" / "process"
        assert any(records.iterdir())
        c.spearlets[0].kill()  # SIGKILL: no cleanup at all
        c.spearlets[0].wait(10)
        time.sleep(0.5)
        assert all(psutil.pid_exists(p) for p in pids), pids  # still running, orphaned
        c.start_spearlet(0)
        assert gone(pids, wait=30), [p for p in pids if psutil.pid_exists(p)]
        with Client(c.sms_addr, timeout=30) as cl:
            deadline = time.monotonic() + 30
            while True:  # the node is back (the old registration may linger a moment)
                try:
                    cl.deploy(P.FunctionSpec(name="pid", runtime="process", handler="rogue:pid",
                                             workdir=shared), node=addr)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            assert int(cl.invoke("pid", node=addr).output) not in pids
        # only the new run's record is left
        assert len([p for p in records.iterdir() if p.name.startswith("run-")]) == 1


def test_a_node_output_cap_lowers_the_limit_and_refuses_more(tmp_path, shared):
    """[runtimes.process] max_output_mb = 2: 3 MiB of output is RESOURCE_EXHAUSTED
    naming 2 MiB, and a function asking for more than the node allows is refused
    at deploy (INVALID_ARGUMENT naming the key), not silently lowered."""
    from spear import errors

    with _cluster(tmp_path, shared, "[runtimes.process]\nmax_output_mb = 2\n") as c:
        c.start(wait=30)
        addr = c.spearlet_addrs[0]
        with Client(c.sms_addr, timeout=30) as cl:
            cl.deploy(P.FunctionSpec(name="three", runtime="process", handler="rogue:big",
                                     workdir=shared), node=addr)
            r = cl.invoke("three", b"3", node=addr, timeout=30)
            assert r.status == "failed" and r.info.error.code == "RESOURCE_EXHAUSTED", r.info
            assert "2 MiB" in r.info.error.message
            with pytest.raises(errors.InvalidArgument, match="max_output_mb"):
                cl.deploy(P.FunctionSpec(name="greedy", runtime="process", command=["true"],
                                         limits=P.Limits(max_output_mb=8)), node=addr)
