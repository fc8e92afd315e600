"""Fixtures of the gateway tests: one real cluster and gateways in front of it.

The cluster (SMS + 2 spearlets, memory store) and the open gateway are
session-scoped: starting daemons is the slow part, and every test leaves
them as it found them apart from the functions and executions it adds (tests
use names of their own and assert membership, never exact lists).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from spear import protocol as P
from spear.cluster import Cluster, free_port
from spear.gateway import server
from tests.helpers import EXAMPLES

#: the open gateway's body limit, small so the 413 tests need no big uploads
MAX_BODY = 1 << 20
HB = dict(heartbeat_interval=0.2, heartbeat_timeout=2.0, cleanup_interval=60.0)


class Api:
    """A gateway under test: its base URL and a requests session."""

    def __init__(self, url: str, proc: subprocess.Popen, log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log
        self.http = requests.Session()

    def __call__(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 30)
        return self.http.request(method, self.url + path, **kw)

    def get(self, path: str, **kw) -> requests.Response:
        return self("GET", path, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self("POST", path, **kw)

    def delete(self, path: str, **kw) -> requests.Response:
        return self("DELETE", path, **kw)

    def deploy(self, spec: P.FunctionSpec) -> dict:
        import msgspec

        r = self.post("/v1/functions", data=msgspec.json.encode(spec),
                      headers={"Content-Type": "application/json"})
        assert r.status_code == 201, r.text
        return r.json()


def start_gateway(sms: str, log: Path, *, config: str | None = None,
                  extra: list[str] | None = None) -> Api:
    port = free_port()
    out = open(log, "ab")
    proc = server.spawn(sms, f"127.0.0.1:{port}", config=config, log_level="info", extra=extra,
                        stdout=out, stderr=out)
    out.close()
    url = f"http://127.0.0.1:{port}"
    try:
        server.wait_healthy(url, proc=proc, timeout=30)
    except Exception:
        stop_gateway(proc)
        raise AssertionError(f"gateway did not start; log:\n{log.read_text()[-3000:]}")
    return Api(url, proc, log)


def stop_gateway(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("gw") / "cluster", spearlets=2, store="memory",
                host_roots=[str(EXAMPLES)], **HB)
    try:
        c.start(wait=30)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def api(cluster, tmp_path_factory):
    """The open gateway (no bearer tokens), body limit 1 MiB, samples every 0.5 s."""
    log = tmp_path_factory.mktemp("gwlog") / "gateway.log"
    g = start_gateway(cluster.sms_addr, log,
                      extra=["--max-body", str(MAX_BODY), "--sample-interval", "0.5"])
    try:
        yield g
    finally:
        stop_gateway(g.proc)


def hello_spec(name: str = "gw-hello") -> P.FunctionSpec:
    return P.FunctionSpec(name=name, runtime="wasm", artifact=(EXAMPLES / "hello.wat").read_bytes())


def python_spec(name: str, handler: str, **kw) -> P.FunctionSpec:
    return P.FunctionSpec(name=name, runtime="process", handler=f"handlers:{handler}",
                          mode="pooled", workdir=str(EXAMPLES), **kw)


