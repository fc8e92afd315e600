"""The cloud provider over Apache Libcloud, with its dummy driver and two
drivers of the test's own: one that keeps names and user data the way real
clouds do (and outlives a provider object, as a cloud does), one that refuses
every node as a cloud over quota does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
import zmq.auth

from spear import errors
from spear.config import load_config
from spear.autoscale.providers.base import NodeType, load

pytest.importorskip("libcloud")
from libcloud.common.types import LibcloudError  # noqa: E402
from libcloud.compute.base import Node  # noqa: E402
from libcloud.compute.drivers.dummy import DummyNodeDriver  # noqa: E402
from libcloud.compute.types import NodeState  # noqa: E402

HERE = __name__  # the drivers below, as this module is imported
SMALL = NodeType(name="small", provider="cloud", options={"size": "Small", "image": "1"})


class NamingCloud(DummyNodeDriver):
    """Names machines as asked, keeps their user data, and shares its machines
    between driver objects (a provider made after a restart sees them)."""

    machines: list = []

    def __init__(self, key, secret=None, **kw) -> None:
        super().__init__(key)
        self.nl = NamingCloud.machines

    def create_node(self, name, size, image, location=None, ex_userdata=None):
        node = Node(id=f"m{len(self.nl) + 1}", name=name, state=NodeState.RUNNING, public_ips=[],
                    private_ips=[], driver=self, size=size, image=image,
                    extra={"userdata": ex_userdata, "location": location})
        self.nl.append(node)
        return node


class QuotaCloud(DummyNodeDriver):
    """Refuses every machine."""

    def create_node(self, name, size, image, ex_userdata=None):
        raise LibcloudError("InstanceLimitExceeded: quota reached", driver=self)


@pytest.fixture(autouse=True)
def _empty_cloud():
    NamingCloud.machines.clear()


@pytest.fixture
def sms_key(tmp_path):
    public, _ = zmq.auth.create_certificates(tmp_path, "sms")
    return Path(public)


def test_dummy_driver_create_and_destroy(arun):
    provider = load("cloud")(options={"cluster": "c1"}, clouds=[{"name": "d", "driver": "dummy", "key": "0"}])
    handle = arun(provider.create(SMALL, "c1-n1"))
    assert handle.provider == "cloud" and handle.ref.startswith("d/") and handle.name == "c1-n1"
    driver = provider.clouds[0].driver
    assert handle.ref.split("/")[1] in {str(n.id) for n in driver.list_nodes()}
    arun(provider.destroy(handle))
    assert handle.ref.split("/")[1] not in {str(n.id) for n in driver.list_nodes()}
    arun(provider.destroy(handle))  # idempotent


def test_create_list_after_restart_destroy_with_node_keys(arun, tmp_path, sms_key):
    # configured as [autoscaler] options can say it: strings, the clouds in a TOML file
    clouds = tmp_path / "clouds.toml"
    clouds.write_text(f'[[clouds]]\nname = "home"\ndriver = "{HERE}:NamingCloud"\n'
                      f'key = "k"\nsecret = "s"\n')
    keys = tmp_path / "work" / "node-keys"  # the default: under the autoscaler's workdir
    kw = dict(sms="tcp://127.0.0.1:7700", workdir=str(tmp_path / "work"),
              options={"cluster": "c2", "clouds_file": str(clouds), "sms_key": str(sms_key),
                       "sms": "tcp://10.0.0.1:7700"})
    provider = load("cloud")(**kw)
    handle = arun(provider.create(SMALL, "c2-n1"))
    machine = NamingCloud.machines[0]
    assert machine.name == "c2--small--c2-n1" and handle.ref == f"home/{machine.id}"

    # the user data is cloud-init that writes the node's own secret key and starts the Spearlet
    doc = yaml.safe_load(machine.extra["userdata"])
    files = {f["path"]: f for f in doc["write_files"]}
    secret_file = tmp_path / "node.key_secret"
    secret_file.write_text(files["/etc/spear/keys/node.key_secret"]["content"])
    assert files["/etc/spear/keys/node.key_secret"]["permissions"] == "0600"
    public, secret = zmq.auth.load_certificate(str(secret_file))
    assert secret and files["/etc/spear/keys/sms.key"]["content"] == sms_key.read_text()
    toml = files["/etc/spear/spear.toml"]["content"]
    (tmp_path / "node.toml").write_text(toml)
    cfg = load_config(tmp_path / "node.toml", env={})  # what the machine's Spearlet reads
    assert cfg.spearlet.sms == "tcp://10.0.0.1:7700" and cfg.spearlet.name == "c2-n1"
    assert cfg.spearlet.labels == {"spear.owner": "autoscaler", "spear.node-type": "small"}
    assert cfg.security.key == "/etc/spear/keys/node.key_secret"
    assert any("spearlet" in cmd for cmd in doc["runcmd"])
    # ... and only its public half stays here, for the SMS's [security] node list
    assert zmq.auth.load_certificate(str(keys / "c2-n1.key")) == (public, None)

    again = load("cloud")(**kw)
    found = arun(again.list())
    assert [(h.ref, h.name, h.node_type) for h in found] == [(handle.ref, "c2-n1", "small")]
    assert arun(load("cloud")(**{**kw, "options": {**kw["options"], "cluster": "other"}}).list()) == []
    arun(again.destroy(found[0]))
    assert arun(again.list()) == [] and not (keys / "c2-n1.key").exists()


def test_refusal_falls_back_to_the_next_cloud_by_cost(arun):
    clouds = [{"name": "spare", "driver": f"{HERE}:NamingCloud", "key": "k", "cost": 3},
              {"name": "cheap", "driver": f"{HERE}:QuotaCloud", "key": "k", "cost": 1}]
    provider = load("cloud")(options={"cluster": "c3"}, clouds=clouds)
    assert [c.name for c in provider.clouds] == ["cheap", "spare"]
    handle = arun(provider.create(SMALL, "c3-n1"))
    assert handle.ref.startswith("spare/")
    # a node type may be limited to some clouds: then the refusal is final
    only_cheap = NodeType(name="small", provider="cloud", options={**SMALL.options, "clouds": "cheap"})
    with pytest.raises(errors.Unavailable, match="quota reached"):
        arun(provider.create(only_cheap, "c3-n2"))


def test_bad_configuration_is_refused_clearly(arun):
    with pytest.raises(errors.ConfigError):
        load("cloud")(clouds=[])
    provider = load("cloud")(clouds=[{"name": "d", "driver": "dummy", "key": "0"}])
    bad = NodeType(name="big", provider="cloud", options={"size": "Galactic", "image": "1"})
    with pytest.raises(errors.Unavailable, match="no size 'Galactic'"):
        arun(provider.create(bad, "n"))


def test_a_shared_node_key_instead_of_one_per_node(arun, tmp_path, sms_key):
    _, shared = zmq.auth.create_certificates(tmp_path, "fleet")
    clouds = [{"name": "home", "driver": f"{HERE}:NamingCloud", "key": "k"}]
    keys = tmp_path / "node-keys"
    provider = load("cloud")(clouds=clouds, options={
        "cluster": "c4", "sms_key": str(sms_key), "node_key": shared, "keys_dir": str(keys)})
    arun(provider.create(SMALL, "c4-n1"))
    doc = yaml.safe_load(NamingCloud.machines[0].extra["userdata"])
    files = {f["path"]: f["content"] for f in doc["write_files"]}
    assert files["/etc/spear/keys/node.key_secret"] == Path(shared).read_text()
    assert not keys.exists()  # nothing new for the SMS to admit
    with pytest.raises(errors.ConfigError, match="sms_key"):
        load("cloud")(clouds=clouds, options={"node_key": shared})
    with pytest.raises(errors.ConfigError, match="cannot read sms_key"):
        load("cloud")(clouds=clouds, options={"sms_key": str(tmp_path / "missing.key")})
