"""The gateway in a cluster with CURVE on: its SMS link, event stream and direct calls."""

from __future__ import annotations

import json

import msgspec
import pytest

from spear.cluster import Cluster
from spear.config import load_config
from spear.mesh.security import keygen

from .conftest import HB, start_gateway, stop_gateway
from tests.helpers import add_spec
from .test_api import _sse

BEARER = {"Authorization": "Bearer tok"}


def _list(paths) -> str:
    return "[" + ", ".join(f'"{p}"' for p in paths) + "]"


@pytest.fixture(scope="module")
def curve(tmp_path_factory):
    d = tmp_path_factory.mktemp("curve")
    keys = {n: keygen(d / "keys", n)[:2] for n in ("sms", "node1", "gw", "vera")}

    def config(own: str, extra: str = "") -> str:
        path = d / f"{own}.toml"
        path.write_text(f'[security]\nkey = "{keys[own][1]}"\nsms_key = "{keys["sms"][0]}"\n'
                        f'admin = {_list([keys["gw"][0]])}\nviewer = {_list([keys["vera"][0]])}\n'
                        f'node = {_list([keys["node1"][0]])}\n{extra}')
        return str(path)

    tokens = 'tokens = { "tok" = "admin" }\n'
    admin = load_config(config("gw", tokens), env={}).security
    c = Cluster(d / "c", spearlets=1, store="memory", config=config("sms"),
                spearlet_config=config("node1"), client_security=admin, **HB)
    gws = []
    try:
        c.start(wait=30)
        gws.append(start_gateway(c.sms_addr, d / "gw.log", config=config("gw", tokens)))
        gws.append(start_gateway(c.sms_addr, d / "vera.log", config=config("vera", tokens)))
        yield gws
    finally:
        for g in gws:
            stop_gateway(g.proc)
        c.stop()


def test_gateway_speaks_curve_to_sms_and_nodes(curve):
    gw, _ = curve
    nodes = gw.get("/v1/nodes", headers=BEARER).json()
    assert len(nodes) == 1 and nodes[0]["public_key"]
    r = gw.post("/v1/functions", data=msgspec.json.encode(add_spec("gw-curve")),
                headers={**BEARER, "Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    r = gw.post("/v1/functions/gw-curve/invoke?args=4,5", headers=BEARER)
    assert r.status_code == 200 and r.content == b"9"
    eid = r.headers["x-spear-execution-id"]
    # the event subscription rides its own CURVE socket
    with gw.get("/v1/events?since=0", headers=BEARER, stream=True, timeout=10) as s:
        events = _sse(s, lambda evs: any(json.loads(e[2])["key"] == eid for e in evs))
    assert events
    # a direct call learns the node's key from the SMS
    node = nodes[0]["name"]
    r = gw.post(f"/v1/functions?node={node}", data=msgspec.json.encode(add_spec("gw-curve-d")),
                headers={**BEARER, "Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    r = gw.post(f"/v1/functions/gw-curve-d/invoke?args=1,1&node={node}", headers=BEARER)
    assert r.status_code == 200 and r.content == b"2"


def test_the_sms_still_checks_the_gateways_own_role(curve):
    _, viewer_gw = curve
    # the token says admin, but this gateway's CURVE key is only a viewer at the SMS
    assert viewer_gw.get("/v1/nodes", headers=BEARER).status_code == 200
    r = viewer_gw.post("/v1/functions", data=msgspec.json.encode(add_spec("gw-nope")),
                       headers={**BEARER, "Content-Type": "application/json"})
    assert r.status_code == 403 and r.json()["code"] == "PERMISSION_DENIED"
