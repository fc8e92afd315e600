"""Identity is the key (issue 13): attacks by peers that hold a valid key.

A real CURVE cluster (SMS + one Spearlet as subprocesses) and raw DEALER
sockets that use the keys of every role, trying to: register as another
node, report results and log chunks for executions dispatched elsewhere,
heartbeat in another node's name, take over a node's route with a chosen
routing id, and read function environment values above their role.
"""

from __future__ import annotations

import time

import pytest
import zmq
import zmq.auth

from spear import protocol as P, roles
from spear.cluster import Cluster
from spear.config import load_config
from spear.ids import is_uuid7

from tests.helpers import add_spec

from .curve import ROLES, client_for, curve_config

ATTACKERS = ["alice", "dave", "ivan", "vera", "node2"]  # admin..viewer, and a node key


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, keys):
    d = tmp_path_factory.mktemp("identity")
    sms_cfg = curve_config(d / "sms.toml", keys, "sms")
    node_cfg = curve_config(d / "node.toml", keys, "node1")
    admin = load_config(curve_config(d / "admin.toml", keys, "alice"), env={}).security
    c = Cluster(d / "c", spearlets=1, config=sms_cfg, spearlet_config=node_cfg,
                heartbeat_interval=0.2, heartbeat_timeout=2.0, client_security=admin)
    try:
        c.start(wait=30)
        yield c, d
    finally:
        c.stop()


class Raw:
    """A bare CURVE DEALER with someone's key: says exactly what a test makes it say."""

    def __init__(self, keys, who: str, addr: str, routing_id: bytes | None = None):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        pub, sec = zmq.auth.load_certificate(str(keys[who][1]))
        self.sock.curve_publickey, self.sock.curve_secretkey = pub, sec
        self.sock.curve_serverkey = zmq.auth.load_certificate(str(keys["sms"][0]))[0]
        if routing_id is not None:
            self.sock.setsockopt(zmq.ROUTING_ID, routing_id)
        self.sock.connect(addr)

    def send(self, msg, payload: bytes | None = None) -> None:
        self.sock.send_multipart(P.encode(msg, payload))

    def recv(self, timeout: float = 5.0):
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return P.decode(self.sock.recv_multipart())[0]

    def rpc(self, msg, payload: bytes | None = None, timeout: float = 5.0):
        self.send(msg, payload)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.recv(max(0.01, deadline - time.monotonic()))
            if reply is not None and getattr(reply, "id", None) == msg.id:
                return reply
        raise AssertionError(f"no reply to {type(msg).__name__}")

    def drain(self, seconds: float) -> list:
        got, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            m = self.recv(max(0.01, deadline - time.monotonic()))
            if m is not None:
                got.append(m)
        return got

    def close(self) -> None:
        self.sock.close(linger=0)


def _node_id(cluster, keys) -> str:
    with client_for(cluster, keys, "alice") as admin:
        [node] = [n for n in admin.nodes() if n.state == "ready" and n.runtimes]
        return node.node_id


def test_a_node_key_cannot_register_as_another_node(cluster, keys):
    c, d = cluster
    victim = _node_id(cluster, keys)
    # the attacker also names its routing id after the victim (all a peer can do)
    mal = Raw(keys, "node2", c.sms_addr, routing_id=victim.encode())
    try:
        r = mal.rpc(P.Register(id=1, node=P.NodeInfo(node_id=victim, runtimes=["wasm", "process"])))
        assert isinstance(r, P.ErrorReply) and r.code == "PERMISSION_DENIED", r
        assert victim in r.message
        # its own id is fine, once; then the key is bound to it
        r = mal.rpc(P.Register(id=2, node=P.NodeInfo(node_id="mallory-node")))
        assert isinstance(r, P.Welcome), r
        r = mal.rpc(P.Register(id=3, node=P.NodeInfo(node_id="another-id")))
        assert isinstance(r, P.ErrorReply) and r.code == "PERMISSION_DENIED", r
        # nor may it heartbeat or deregister in the victim's name
        r = mal.rpc(P.Heartbeat(id=4, node_id=victim, usage=P.Usage()))
        assert isinstance(r, P.ErrorReply) and r.code == "PERMISSION_DENIED", r
        r = mal.rpc(P.Deregister(id=5, node_id=victim))
        assert isinstance(r, P.ErrorReply) and r.code == "PERMISSION_DENIED", r
    finally:
        mal.close()
    with client_for(cluster, keys, "alice") as admin:
        admin.deploy(add_spec("add-id"))
        for i in range(5):
            r = admin.invoke("add-id", args=[i, 1])
            assert r.ok and r.output == str(i + 1).encode() and r.info.node_id == victim
        assert admin.node(victim).state == "ready"
    log = (c.data / "sms.log").read_text()
    assert "SECURITY: refused node message" in log and "mallory-node" in log


def test_results_and_logs_count_only_from_the_node_dispatched_to(cluster, keys):
    c, d = cluster
    victim = _node_id(cluster, keys)
    slow = P.FunctionSpec(name="slow-real", runtime="process",
                          command=["/bin/sh", "-c", "sleep 1; printf real"])
    mal = Raw(keys, "node2", c.sms_addr, routing_id=b"mallory-node")
    try:
        assert isinstance(mal.rpc(P.Register(id=1, node=P.NodeInfo(node_id="mallory-node"))),
                          P.Welcome)
        with client_for(cluster, keys, "alice") as admin:
            admin.deploy(slow)
            before = admin.stats().counts.get("forged_reports", 0)
            eid = admin.submit("slow-real")
            assert is_uuid7(eid)  # 128-bit, time-ordered: not guessable from another
            for seq in range(3):
                mal.send(P.LogChunk(id=0, execution_id=eid, data=b"FORGED LOG", seq=seq))
            mal.send(P.Result(id=0, execution=P.ExecutionInfo(
                execution_id=eid, function="slow-real", status="succeeded")), b"FORGED")
            mal.send(P.Result(id=0, execution=P.ExecutionInfo(
                execution_id=eid, function="slow-real", status="failed",
                error=P.ErrorInfo(code="FUNCTION_ERROR", message="forged"))))
            r = admin.wait(eid, timeout=20)
            assert r.ok and r.output == b"real", (r.info, r.output)
            assert r.info.node_id == victim
            assert admin.stats().counts.get("forged_reports", 0) >= before + 1
    finally:
        mal.close()


@pytest.mark.parametrize("who", ATTACKERS)
def test_no_role_can_take_over_a_nodes_route(cluster, keys, who):
    """A peer that names its routing id after a node (node ids are public) gets
    none of the node's Dispatches: routes are random and bound to keys."""
    c, d = cluster
    victim = _node_id(cluster, keys)
    thief = Raw(keys, who, c.sms_addr, routing_id=victim.encode())
    try:
        # connected (and, for the first thief, answered: the route is live; later
        # thieves reuse a routing id that belongs to the first one's key and are
        # not even answered)
        thief.send(P.Ping(id=7))
        with client_for(cluster, keys, "alice") as admin:
            admin.deploy(add_spec("add-route"))
            for i in range(5):
                r = admin.invoke("add-route", args=[i, i], data=b"other users' input")
                assert r.ok and r.output == str(2 * i).encode()
                assert r.info.node_id == victim
        stolen = [m for m in thief.drain(0.5) if not isinstance(m, (P.Pong, P.ErrorReply))]
        assert not any(isinstance(m, P.Dispatch) for m in stolen)
        assert stolen == []
    finally:
        thief.close()


def test_env_values_follow_the_role_and_secrets_never_leave(cluster, keys):
    c, d = cluster
    spec = P.FunctionSpec(name="envfn", runtime="process",
                          command=["/bin/sh", "-c", 'printf "%s/%s" "$PLAIN" "$TOKEN"'],
                          env={"PLAIN": "plain-value", "TOKEN": "tok-9f8e7d"}, secret_env=["TOKEN"])
    with client_for(cluster, keys, "alice") as admin:
        admin.deploy(spec)
        bad = P.FunctionSpec(name="envbad", runtime="process", command=["/bin/true"],
                             env={"A": "1"}, secret_env=["MISSING"])
        from spear import errors

        with pytest.raises(errors.InvalidArgument):
            admin.deploy(bad)
    seen = {}
    for who, role in ROLES.items():
        with client_for(cluster, keys, who) as cl:
            seen[role] = dict(cl.function("envfn").env)
    for role in ("admin", "deployer"):
        assert seen[role] == {"PLAIN": "plain-value", "TOKEN": roles.SECRET}, role
    for role in ("invoker", "viewer"):
        assert seen[role] == {"PLAIN": roles.REDACTED, "TOKEN": roles.SECRET}, role
    with client_for(cluster, keys, "ivan") as invoker:  # the function still gets both
        assert invoker.invoke("envfn").output == b"plain-value/tok-9f8e7d"
    for log in ("sms.log", "spearlet-1.log"):
        p = c.data / log
        if p.exists():
            assert "tok-9f8e7d" not in p.read_text(), log


def test_only_admin_and_deployer_keys_may_drain_a_node(cluster, keys):
    from spear import errors

    node = _node_id(cluster, keys)
    for who, role in ROLES.items():
        with client_for(cluster, keys, who) as cl:
            if role in ("admin", "deployer"):
                assert cl.drain(node).state == "draining", role
                assert cl.drain(node, False).state == "ready", role
            else:
                with pytest.raises(errors.PermissionDenied):
                    cl.drain(node)
    with client_for(cluster, keys, "alice") as admin:
        assert admin.node(node).state == "ready"


def _wait(pred, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_node_keys_dir_admits_and_refuses_keys_while_the_sms_runs(tmp_path, keys):
    """A node whose key is added to [security] node_keys_dir after the SMS started
    joins (on SIGHUP); once the key is removed its open connection and any new one
    are refused. Files another user could have written, or that are no keys, are skipped."""
    import os
    import shutil
    import signal

    from spear.mesh.security import keygen

    d = tmp_path
    keys_dir = d / "node-keys"
    keys_dir.mkdir(mode=0o700)
    (keys_dir / "junk.key").write_text("not a key\n")
    sms_cfg = curve_config(d / "sms.toml", keys, "sms")
    with open(sms_cfg, "a") as fh:
        fh.write(f'node_keys_dir = "{keys_dir}"\nnode_keys_poll = 3600\n')
    gen = d / "gen"
    pub, sec, _ = keygen(gen, "cloud1")
    wpub, wsec, _ = keygen(gen, "lax")
    keys = {**keys, "cloud1": (pub, sec), "lax": (wpub, wsec)}
    node_cfg = d / "cloud1.toml"
    node_cfg.write_text(f'[security]\nkey = "{sec}"\nsms_key = "{keys["sms"][0]}"\n')
    admin = load_config(curve_config(d / "admin.toml", keys, "alice"), env={}).security
    c = Cluster(d / "c", spearlets=0, config=sms_cfg, spearlet_config=str(node_cfg),
                heartbeat_interval=0.2, heartbeat_timeout=2.0, client_security=admin)

    def register(who: str, node_id: str, timeout: float = 3.0):
        raw = Raw(keys, who, c.sms_addr)
        try:
            return raw.rpc(P.Register(id=1, node=P.NodeInfo(node_id=node_id)), timeout=timeout)
        except AssertionError:
            return None  # the handshake was refused: no answer at all
        finally:
            raw.close()

    try:
        c.start(wait=30)
        assert register("cloud1", "cloud1-raw", timeout=1.5) is None
        shutil.copy(pub, keys_dir / "cloud1.key")
        shutil.copy(wpub, keys_dir / "lax.key")
        os.chmod(keys_dir / "lax.key", 0o664)  # group-writable: anyone in the group could swap it
        c.sms.send_signal(signal.SIGHUP)
        c.start_spearlet(0)
        c.wait_ready(1, timeout=30)
        assert register("lax", "lax-raw", timeout=1.5) is None
        with client_for((c, d), keys, "alice") as cli:
            [node] = [n for n in cli.nodes() if n.state == "ready"]
            assert node.name == "spearlet-1"
            cli.deploy(add_spec("add-dir"))
            assert cli.invoke("add-dir", args=[2, 3]).output == b"5"
        # an open connection of the key, made before its removal
        raw = Raw(keys, "cloud1", c.sms_addr)
        try:
            assert isinstance(raw.rpc(P.Register(id=1, node=P.NodeInfo(node_id="cloud1-raw2"))),
                              P.ErrorReply)  # the key is bound to spearlet-1's id: refused by identity
            (keys_dir / "cloud1.key").unlink()
            c.sms.send_signal(signal.SIGHUP)
            assert _wait(lambda: "cloud1.key removed" in (c.data / "sms.log").read_text())
            r = raw.rpc(P.Heartbeat(id=2, node_id="cloud1-raw2", usage=P.Usage()))
            assert isinstance(r, P.ErrorReply) and r.code == "PERMISSION_DENIED", r
        finally:
            raw.close()
        assert register("cloud1", "cloud1-raw3", timeout=1.5) is None
        with client_for((c, d), keys, "alice") as cli:
            assert _wait(lambda: all(n.state != "ready" for n in cli.nodes()), timeout=30)
        log = (c.data / "sms.log").read_text()
        assert "junk.key skipped" in log and "lax.key skipped" in log and "writable by group" in log
        assert c.sms.poll() is None
    finally:
        c.stop()


def test_read_keys_dir_trusts_only_this_users_unwritable_files(tmp_path):
    import os

    from spear.mesh.security import Security, keygen, read_keys_dir

    pub, _, z = keygen(tmp_path / "gen", "n1")
    pub2, _, _ = keygen(tmp_path / "gen", "n2")
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    (d / "n1.key").write_bytes(pub.read_bytes())
    os.symlink(pub2, d / "n2.key")  # a link could point anywhere: not followed
    (d / "n1.key_secret").write_text("ignored: not a public key file\n")
    assert read_keys_dir(d) == {z.encode(): "n1.key"}
    sec = Security(roles={b"x" * 40: "admin"})
    assert sec.admit_node_keys(read_keys_dir(d)) == (["n1.key"], [])
    assert sec.role_now("node", z) == "node"
    assert sec.admit_node_keys({}) == ([], ["n1.key"])
    assert sec.role_now("node", z) == "" and sec.roles == {b"x" * 40: "admin"}
    os.chmod(d, 0o777)
    assert read_keys_dir(d) is None  # anyone could add a key: the directory is not read
    assert read_keys_dir(tmp_path / "missing") is None
