"""schemathesis against /openapi.json: generated requests find no server error.

A cluster of its own (one spearlet, docker runtime off) takes the random
functions the run deploys, so they never meet the other tests' cluster.
The run is bounded (10 examples per operation, all phases) and takes
about 20 s; the SSE routes that never end are left out (tested in
test_api.py). ``st_hooks.py`` adds MessagePack both ways and the check
that tells a gateway failure from a failed execution's outcome.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spear.cluster import Cluster

from .conftest import HB, start_gateway, stop_gateway
from tests.helpers import add_spec

pytest.importorskip("schemathesis", reason="pip install schemathesis")

HOOKS = Path(__file__).with_name("st_hooks.py")
SEED = 20261126


@pytest.fixture
def fuzz_gateway(tmp_path):
    cfg = tmp_path / "spear.toml"
    cfg.write_text("[runtimes.docker]\nenabled = false\n[spearlet]\nmax_concurrency = 16\n")
    c = Cluster(tmp_path / "cluster", spearlets=1, store="memory", spearlet_config=str(cfg), **HB)
    try:
        c.start(wait=30)
        g = start_gateway(c.sms_addr, tmp_path / "gateway.log",
                          extra=["--max-body", str(1 << 20), "--invoke-timeout", "10"])
        try:
            g.deploy(add_spec("add"))
            yield g
        finally:
            stop_gateway(g.proc)
    finally:
        c.stop()


def _st() -> list[str]:
    exe = shutil.which("st", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "schemathesis.cli"]


def test_schemathesis_finds_no_server_error(fuzz_gateway, tmp_path):
    g = fuzz_gateway
    cmd = _st() + [
        "run", f"{g.url}/openapi.json",
        "--max-examples", "10", "--seed", str(SEED), "--workers", "1",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--checks", "spear_no_server_error,status_code_conformance,content_type_conformance,"
                    "response_schema_conformance,response_headers_conformance",
        "--exclude-path", "/v1/events", "--exclude-path", "/v1/live/stream",
        "--request-timeout", "20", "--no-color",
        "--report", "junit", "--report-dir", str(tmp_path / "report"),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    tail = r.stdout[-6000:]
    print(tail)
    assert r.returncode == 0, f"schemathesis found problems:\n{tail}\n{r.stderr[-2000:]}"
    assert " passed" in r.stdout and "generated" in r.stdout
    log = (tmp_path / "gateway.log").read_text()
    assert '"level":"error"' not in log, log[-3000:]
