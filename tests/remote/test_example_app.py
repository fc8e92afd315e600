"""examples/python-app end to end: deployed from its directory, called from 8
threads, mapped over 1,000 inputs, a remote exception re-raised locally."""

from __future__ import annotations

import ast
import os

from tests.helpers import EXAMPLES

from .conftest import run_driver

APP = EXAMPLES / "python-app"


def _line(out: str, prefix: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(prefix))[len(prefix):].strip()


def test_the_example_project_runs_end_to_end(cluster, user_site):
    done = run_driver(APP, "driver.py", cluster, user_site)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    node = ast.literal_eval(_line(out, "runs on the node as:"))
    assert node["spear"] is False  # the node's environment has no Spear
    if os.geteuid() == 0:
        assert node["user"] == "nobody"  # the sandbox user of a root Spearlet
    assert ast.literal_eval(_line(out, "8 threads:")) == [
        "0 Bytes", "1.0 KiB", "2.0 KiB", "3.0 KiB", "4.0 KiB", "5.0 KiB", "6.0 KiB", "7.0 KiB"]
    assert _line(out, "map over 1000:") == "0 Bytes ... 999 Bytes"
    assert _line(out, "remote error:") == "a size cannot be negative: -1"
    assert "Remote traceback:" in out
    assert 'raise ValueError(f"a size cannot be negative: {n_bytes}")' in out
    assert f"File \"{APP / 'sizes' / 'describe.py'}\", line" in out  # the local file, not the node's copy
