"""CURVE, ZAP and roles with real daemons (issue: security)."""

from __future__ import annotations

import socket
import threading

import pytest

from spear import Client, errors, protocol as P
from spear.cluster import Cluster, free_port
from spear.config import load_config
from tests.helpers import EXAMPLES, add_spec, spear_cli

from .curve import client_for, curve_config

SECRET = b"TOPSECRET-PAYLOAD-7f3a9c"


@pytest.fixture(scope="module")
def secure(tmp_path_factory, keys):
    d = tmp_path_factory.mktemp("secure")
    sms_cfg = curve_config(d / "sms.toml", keys, "sms")
    node_cfg = curve_config(d / "node.toml", keys, "node1")
    admin = load_config(curve_config(d / "admin.toml", keys, "alice"), env={}).security
    c = Cluster(d / "c", spearlets=1, config=sms_cfg, spearlet_config=node_cfg,
                heartbeat_interval=0.2, heartbeat_timeout=1.0, client_security=admin,
                host_roots=[str(EXAMPLES)])
    try:
        c.start(wait=30)
        yield c, d
    finally:
        c.stop()


def test_nodes_authenticate_and_are_ready(secure, keys):
    with client_for(secure, keys, "alice") as c:
        nodes = c.nodes()
        assert len(nodes) == 1 and nodes[0].state == "ready"
        assert nodes[0].public_key  # clients learn the node's key from the SMS


def test_each_role_allowed_and_denied(secure, keys):
    with client_for(secure, keys, "alice") as admin:
        admin.deploy(add_spec())
        assert admin.invoke("add", args=[1, 2]).output == b"3"
    with client_for(secure, keys, "dave") as deployer:
        deployer.deploy(add_spec("add2"))
        assert {f.name for f in deployer.functions()} >= {"add", "add2"}
        with pytest.raises(errors.PermissionDenied):
            deployer.invoke("add", args=[1, 2])
    with client_for(secure, keys, "ivan") as invoker:
        assert invoker.invoke("add2", args=[2, 2]).output == b"4"
        eid = invoker.submit("add", args=[5, 5])
        assert invoker.wait(eid, timeout=5).output == b"10"
        with pytest.raises(errors.PermissionDenied):
            invoker.deploy(add_spec("add3"))
    with client_for(secure, keys, "vera") as viewer:
        assert viewer.nodes() and viewer.functions()
        assert viewer.execution(eid).ok
        for call in (lambda: viewer.invoke("add", args=[1, 1]),
                     lambda: viewer.deploy(add_spec("add4")),
                     lambda: viewer.remove("add"),
                     lambda: viewer.cancel(eid)):
            with pytest.raises(errors.PermissionDenied):
                call()


def test_node_key_can_only_act_as_a_node(secure, keys):
    with client_for(secure, keys, "node2") as c:
        with pytest.raises(errors.PermissionDenied):
            c.nodes()
        with pytest.raises(errors.PermissionDenied):
            c.deploy(add_spec("evil"))
        with pytest.raises(errors.PermissionDenied):
            c.invoke("add", args=[1, 1])


def test_unknown_key_and_plaintext_clients_are_refused(secure, keys):
    c, _ = secure
    with client_for(secure, keys, "mallory", timeout=1.0) as m:
        with pytest.raises(errors.DeadlineExceeded):
            m.nodes()
    with Client(c.sms_addr, timeout=1.0) as plain:
        with pytest.raises(errors.DeadlineExceeded):
            plain.nodes()
    with Client(c.spearlet_addrs[0], timeout=1.0) as plain:
        with pytest.raises(errors.DeadlineExceeded):
            plain.ping()
    # the daemons kept serving the legitimate ones
    with client_for(secure, keys, "vera") as v:
        assert v.nodes()[0].state == "ready"


def test_direct_invocation_checks_roles_on_the_spearlet(secure, keys):
    c, _ = secure
    addr = c.spearlet_addrs[0]
    with client_for(secure, keys, "alice") as admin:
        admin.deploy(add_spec("direct"), node=addr)
    with client_for(secure, keys, "ivan") as invoker:
        assert invoker.invoke("direct", args=[3, 4], node=addr).output == b"7"
    with client_for(secure, keys, "vera") as viewer:
        with pytest.raises(errors.PermissionDenied):
            viewer.invoke("direct", args=[3, 4], node=addr)


class Tap:
    """A TCP proxy on loopback that records every byte in both directions."""

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self.upstream = upstream_port
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.srv = socket.create_server(("127.0.0.1", self.port))
        self.srv.settimeout(0.2)
        self.stop = False
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.stop:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                continue
            up = socket.create_connection(("127.0.0.1", self.upstream))
            for a, b in ((conn, up), (up, conn)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                t.start()
                self.threads.append(t)

    def _pump(self, a, b):
        a.settimeout(0.2)
        while not self.stop:
            try:
                data = a.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            with self.lock:
                self.seen += data
            try:
                b.sendall(data)
            except OSError:
                break
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def close(self):
        self.stop = True
        self.srv.close()


def _capture_invoke(sms_port: int, client_factory) -> bytes:
    tap = Tap(sms_port)
    try:
        with client_factory(f"tcp://127.0.0.1:{tap.port}") as c:
            r = c.invoke("echo", SECRET)
            assert r.ok and r.output == SECRET, r.info.error
    finally:
        tap.close()
    return bytes(tap.seen)


def test_curve_traffic_is_not_readable_on_the_wire(secure, keys, tmp_path):
    c, d = secure
    echo = P.FunctionSpec(name="echo", runtime="process", handler="handlers:echo",
                          workdir=str(EXAMPLES))
    with client_for(secure, keys, "alice") as admin:
        admin.deploy(echo)
    cfg = load_config(curve_config(d / "ivan2.toml", keys, "ivan"), env={})
    seen = _capture_invoke(int(c.sms_addr.rsplit(":", 1)[1]),
                           lambda a: Client(a, timeout=5, security=cfg.security))
    assert len(seen) > 100 and SECRET not in seen and P.PROTOCOL not in seen
    # control: the same exchange with an open cluster shows the payload in clear
    with Cluster(tmp_path / "open", spearlets=1, host_roots=[str(EXAMPLES)]) as oc:
        oc.start(wait=30)
        with Client(oc.sms_addr) as o:
            o.deploy(echo)
        seen = _capture_invoke(oc.sms_port, lambda a: Client(a, timeout=5))
    assert SECRET in seen and P.PROTOCOL in seen


def test_keygen_cli_writes_a_private_secret(tmp_path):
    r = spear_cli("keygen", "bob", "--dir", str(tmp_path), "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "bob.key").exists()
    assert (tmp_path / "bob.key_secret").stat().st_mode & 0o777 == 0o600


def test_open_daemon_warns_loudly(tmp_path):
    with Cluster(tmp_path / "c", spearlets=1) as c:
        c.start(wait=30)
    log = (tmp_path / "c" / "sms.log").read_text()
    assert "WITHOUT CURVE" in log
