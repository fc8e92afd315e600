"""The runtime manager: implementations imported lazily by name, a missing
optional dependency said plainly, and the functions' scrubbed environment."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spear import errors
from spear.config import load_config
from spear.runtimes import RuntimeManager, manager, scrubbed_env

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_runtimes_loads_no_implementation():
    code = ("import sys, spear.runtimes\n"
            "print(sorted(m for m in sys.modules if m.startswith('spear.runtimes.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert eval(out) == ["spear.runtimes.base", "spear.runtimes.hostpaths", "spear.runtimes.manager"]


@pytest.fixture
def needs_missing(tmp_path, monkeypatch):
    """A runtime module whose optional dependency is not installed."""
    (tmp_path / "spear_test_needs_missing.py").write_text(
        "import spear_test_no_such_package\nclass Thing: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "spear_test_needs_missing:Thing"
    sys.modules.pop("spear_test_needs_missing", None)


def test_a_missing_optional_dependency_is_named(needs_missing):
    with pytest.raises(errors.Unavailable, match="spear_test_no_such_package.*not installed"):
        manager.load(needs_missing)


def test_a_runtime_whose_dependency_is_missing_is_unavailable_with_the_reason(
        needs_missing, tmp_path, monkeypatch):
    monkeypatch.setitem(manager.RUNTIMES, "docker", needs_missing)
    cfg = tmp_path / "spear.toml"
    cfg.write_text(f'[spearlet]\ndata = "{tmp_path / "node"}"\n'
                   "[runtimes.wasm]\nenabled = false\n[runtimes.process]\nenabled = false\n")
    config = load_config(cfg, env={})

    async def main():
        rm = RuntimeManager(config, config.spearlet.data, "node-1")
        await rm.probe()
        assert rm.runtimes == {}
        assert "spear_test_no_such_package" in rm.unavailable["docker"], rm.unavailable
        with pytest.raises(errors.Unavailable, match="spear_test_no_such_package"):
            rm.get("docker")
        await rm.close()

    asyncio.run(main())


def test_scrubbed_env_keeps_no_secret(monkeypatch):
    monkeypatch.setenv("SPEAR_TEST_SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = scrubbed_env()
    assert "SPEAR_TEST_SECRET_TOKEN" not in env and env["LANG"] == "C.UTF-8"
    assert env["HOME"] == "/tmp" and env["PATH"]
