"""The details users trip on, each run through ``python -m spear`` against a real cluster.

Output bytes kept exact, ``--node`` by name, options and positionals in any
order, one meaning per timeout flag, readable ``stats``, ``up``'s log level and
port checks, Ctrl-C during ``invoke`` (waiting or streaming), and what ``import spear`` and
``spear --help`` load.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from spear import Client, protocol as P
from spear.cli import build_parser, main as cli_main
from spear.cluster import Cluster
from tests.helpers import add_spec, free_port, gone, spear_cli, wait_for

#: printf's escapes: two NUL-bearing binary bytes, then no newline
BINARY = b"\x00\xff\x01ab"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cliux") / "spear", spearlets=1, store="memory")
    try:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=30) as cl:
            cl.deploy(add_spec())
            cl.deploy(add_spec(), node=c.spearlet_addrs[0])  # for the --node tests, in any order
            if "process" in cl.nodes()[0].runtimes:
                cl.deploy(P.FunctionSpec(name="echo", runtime="process", command=["cat"]))
                cl.deploy(P.FunctionSpec(name="binary", runtime="process",
                                         command=["printf", "\\000\\377\\001ab"]))
                cl.deploy(P.FunctionSpec(name="sleepy", runtime="process", command=["sleep", "30"]))
        yield c
    finally:
        c.stop()


@pytest.fixture
def process_runtime(cluster):
    with Client(cluster.sms_addr) as c:
        if "process" not in c.nodes()[0].runtimes:
            pytest.skip("the process runtime is not available on this node")


# ------------------------------------------------------------------ invoke output


def test_invoke_writes_the_output_bytes_exactly(cluster):
    r = spear_cli("invoke", "add", "--args", "2,40", "--sms", cluster.sms_addr, text=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"42"  # no newline added when stdout is not a terminal


def test_invoke_keeps_binary_output_intact(cluster, process_runtime):
    r = spear_cli("invoke", "binary", "--sms", cluster.sms_addr, text=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout == BINARY


# ------------------------------------------------------------------ --node by name


def test_node_by_unknown_name_is_one_clear_line(cluster):
    r = spear_cli("invoke", "add", "--args", "1,2", "--node", "nope", "--sms", cluster.sms_addr)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "spear: NOT_FOUND: no node named 'nope' (known: spearlet-1)"]


def test_node_by_name_reaches_that_spearlet(cluster):
    r = spear_cli("invoke", "add", "--args", "1,2", "--node", "spearlet-1", "--sms", cluster.sms_addr)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "3"
    r = spear_cli("ping", "--node", "spearlet-1", "--sms", cluster.sms_addr)
    assert r.returncode == 0 and r.stdout.startswith("spearlet"), r.stderr


# ------------------------------------------------------------------ argument order


@pytest.mark.parametrize("argv", [
    ["invoke", "echo", "hi", "--json"],
    ["invoke", "echo", "--json", "hi"],
    ["invoke", "--json", "echo", "hi"],
    ["invoke", "echo", "--args", "1,2", "hi", "--json"],
    ["invoke", "--timeout", "5", "echo", "--exec-timeout", "9", "hi", "--json"],
])
def test_options_and_positionals_in_any_order(argv):
    args = build_parser("invoke").parse_args(argv)
    assert (args.name, args.input, args.json) == ("echo", "hi", True)


@pytest.mark.parametrize("argv, want", [
    (["nodes", "--json", "spearlet-1"], "spearlet-1"),
    (["nodes", "spearlet-1", "--json"], "spearlet-1"),
    (["executions", "--limit", "3", "abc"], "abc"),
])
def test_an_optional_positional_after_an_option(argv, want):
    args = build_parser(argv[0]).parse_args(argv)
    assert (getattr(args, "node_id", None) or getattr(args, "execution_id", None)) == want


def test_input_after_an_option_reaches_the_function(cluster, process_runtime):
    r = spear_cli("invoke", "echo", "--sms", cluster.sms_addr, "hello there")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello there"


# ------------------------------------------------------------------ timeout flags


def test_each_timeout_flag_says_what_it_bounds(capsys):
    with pytest.raises(SystemExit):
        build_parser("invoke").parse_args(["invoke", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--timeout TIMEOUT seconds to wait for the SMS (or spearlet) to answer" in text
    assert "--exec-timeout S seconds this execution may run" in text
    with pytest.raises(SystemExit):
        build_parser("deploy").parse_args(["deploy", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--exec-timeout S seconds an execution of this function may run" in text
    assert "--timeout-limit" not in text


def test_deploy_old_timeout_flag_still_sets_the_limit():
    old = build_parser("deploy").parse_args(["deploy", "f", "--timeout-limit", "5"])
    new = build_parser("deploy").parse_args(["deploy", "f", "--exec-timeout", "5"])
    assert old.limit_timeout == new.limit_timeout == 5.0


# ------------------------------------------------------------------ stats


def test_stats_prints_lines_and_json(cluster):
    r = spear_cli("stats", "--sms", cluster.sms_addr)
    assert r.returncode == 0, r.stderr
    assert "{" not in r.stdout and "}" not in r.stdout
    lines = dict(line.split("  ", 1) for line in r.stdout.splitlines())
    assert lines["nodes ready"].strip() == "1"
    assert "reserved of" in lines["cores"]
    r = spear_cli("stats", "--json", "--sms", cluster.sms_addr)
    assert r.returncode == 0 and json.loads(r.stdout)["nodes_ready"] == 1


# ------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_during_invoke_names_the_execution(cluster, process_runtime):
    p = subprocess.Popen([sys.executable, "-m", "spear", "invoke", "sleepy", "--sms", cluster.sms_addr],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with Client(cluster.sms_addr) as c:
            running = wait_for(lambda: [i for i in c.executions(function="sleepy")[0]
                                        if i.status not in P.TERMINAL], 20,
                               "the sleepy execution to start")
            # the SMS holds the execution a moment before the reply naming it reaches
            # the command (a Ctrl-C in between has no id to print): give the reply time
            time.sleep(1.0)
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=20)
            eid = running[0].execution_id
            assert p.returncode == 130
            assert f"interrupted; execution {eid} continues" in err
            assert f"spear cancel {eid}" in err and "Traceback" not in err
            assert c.execution(eid).info.status not in P.TERMINAL  # Ctrl-C left it running
            c.cancel(eid)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_ctrl_c_during_invoke_stream_names_the_execution(cluster, process_runtime):
    p = subprocess.Popen([sys.executable, "-m", "spear", "invoke", "sleepy", "--stream",
                          "--sms", cluster.sms_addr],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with Client(cluster.sms_addr) as c:
            before = {i.execution_id for i in c.executions(function="sleepy")[0]}
            running = wait_for(lambda: [i for i in c.executions(function="sleepy")[0]
                                        if i.status not in P.TERMINAL
                                        and i.execution_id not in before], 20,
                               "the streamed sleepy execution to start")
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=20)
            eid = running[0].execution_id
            assert p.returncode == 130
            assert f"interrupted; execution {eid} continues" in err
            assert f"spear logs {eid}" in err and "Traceback" not in err
            assert c.execution(eid).info.status not in P.TERMINAL  # Ctrl-C left it running
            c.cancel(eid)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


class _InterruptedStream:
    """A client whose stream is interrupted at once: no execution carries its trace id yet."""

    def __init__(self) -> None:
        self.trace_ids: list[str] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def stream(self, name, data, **kw):
        self.trace_ids.append(kw["trace_id"])
        raise KeyboardInterrupt
        yield  # a generator, as the client's is

    def executions(self, **kw):
        return [], 0


@pytest.mark.parametrize("node, where", [
    (None, "interrupted; the execution continues: spear executions --function sleepy lists it"),
    ("tcp://127.0.0.1:9", "interrupted; the execution continues on tcp://127.0.0.1:9"),
])
def test_ctrl_c_before_the_stream_names_its_execution(monkeypatch, capsys, node, where):
    from spear.cli import executions

    client = _InterruptedStream()
    monkeypatch.setattr(executions, "make_client", lambda args: client)
    argv = ["invoke", "sleepy", "--stream"] + (["--node", node] if node else [])
    assert cli_main(argv) == 130
    assert capsys.readouterr().err.strip() == where
    assert len(client.trace_ids[0]) == 32  # a trace id of the command's own, to find it by


# ------------------------------------------------------------------ spear up


def _up(tmp_path, *argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "spear", *argv, "--data", str(tmp_path / "up")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)


def test_up_passes_its_log_level_to_the_daemons(tmp_path):
    port = free_port()
    p = _up(tmp_path, "up", "--log-level", "debug", "-n", "1", "--no-gateway", "--store", "memory",
            "--port", str(port))
    try:
        line = p.stdout.readline()
        assert "ready" in line, (line, p.stderr.read() if p.poll() is not None else "")
        kids = psutil.Process(p.pid).children()
        cmds = [k.cmdline() for k in kids]
        assert len(cmds) == 2
        for cmd in cmds:
            assert cmd[cmd.index("--log-level") + 1] == "debug", cmd
    finally:
        pids = [k.pid for k in psutil.Process(p.pid).children()] if p.poll() is None else []
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
        assert gone(pids, 10)


@pytest.mark.parametrize("what", ["SMS", "gateway"])
def test_up_on_a_taken_port_names_it_and_starts_nothing(tmp_path, what):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["up", "-n", "1", "--store", "memory"]
        argv += (["--port", str(port), "--no-gateway"] if what == "SMS"
                 else ["--port", str(free_port()), "--http", f"127.0.0.1:{port}"])
        p = _up(tmp_path, *argv)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert "ready" not in out
    assert f"port {port} on 127.0.0.1 ({what}) is taken" in err
    assert not (tmp_path / "up").exists() or not any((tmp_path / "up").glob("*.log"))


def test_cluster_refuses_a_taken_sms_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        c = Cluster(tmp_path / "c", spearlets=1, sms_port=port, store="memory")
        with pytest.raises(Exception, match=f"port {port}"):
            c.start(wait=10)
        c.stop()
        assert c.sms is None and c.spearlets == []


# ------------------------------------------------------------------ what loads


def _loaded_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint('\\n' + ' '.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                       env={**os.environ})
    assert r.returncode == 0, r.stderr
    return set(r.stdout.splitlines()[-1].split())


#: what neither ``import spear`` nor ``spear --help`` needs: the mesh, the codec, the config
LAZY = {"zmq", "msgspec", "psutil", "spear.config", "spear.protocol", "spear.client", "spear.mesh",
        "tomllib", "asyncio"}


def test_import_spear_loads_nothing_heavy():
    loaded = _loaded_after("import spear")
    assert not loaded & LAZY, sorted(loaded & LAZY)


def test_spear_help_loads_nothing_heavy():
    loaded = _loaded_after("import runpy\nsys.argv = ['spear', '--help']\ntry:\n"
                           "    runpy.run_module('spear', run_name='__main__')\n"
                           "except SystemExit:\n    pass")
    assert not loaded & LAZY, sorted(loaded & LAZY)
