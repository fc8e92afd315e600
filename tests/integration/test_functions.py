"""Direct invocation on a real Spearlet subprocess (its Runner and core)."""

from __future__ import annotations

import signal
import time

import pytest

from spear import Client, errors, protocol as P, roles
from spear.cluster import Cluster
from spear.ids import is_uuid7
from tests.helpers import ADD_WAT, EXAMPLES, spear_cli, wait_for


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    d = tmp_path_factory.mktemp("fn")
    cfg = d / "spear.toml"
    cfg.write_text(
        "[spearlet]\nmax_concurrency = 4\ndrain_timeout = 10\n"
        "[runtimes.docker]\nbase_url = \"unix:///nonexistent/docker.sock\"\n")
    c = Cluster(d / "cluster", spearlets=1, config=str(cfg), heartbeat_interval=0.2,
                heartbeat_timeout=1.0, host_roots=[str(EXAMPLES)])
    try:
        c.start(wait=30)
        with Client(c.sms_addr, timeout=20) as cl:
            addr = c.spearlet_addrs[0]
            cl.deploy(P.FunctionSpec(name="hello", runtime="wasm",
                                     artifact=(EXAMPLES / "hello.wat").read_bytes()), node=addr)
            cl.deploy(P.FunctionSpec(name="add", runtime="wasm", handler="add",
                                     artifact=ADD_WAT), node=addr)
            cl.deploy(P.FunctionSpec(name="upper", runtime="process", handler="handlers:upper",
                                     workdir=str(EXAMPLES), pool=P.PoolSettings(min_warm=1, max=4)),
                      node=addr)
            cl.deploy(P.FunctionSpec(name="sleepy", runtime="process", command=["sleep", "30"],
                                     limits=P.Limits(timeout=60)), node=addr)
            cl.deploy(P.FunctionSpec(name="fail", runtime="process",
                                     command=["sh", "-c", "echo oops >&2; exit 3"]), node=addr)
        yield c
    finally:
        c.stop()


@pytest.fixture
def client(node):
    with Client(node.sms_addr, timeout=20) as c:
        yield c


def addr(node):
    return node.spearlet_addrs[0]


def test_sync_wasm_command_and_export(node, client):
    r = client.invoke("hello", b"tests", node=addr(node))
    assert r.ok and r.output == b"hello, tests"
    assert r.info.node_id and r.info.timings.total >= r.info.timings.run > 0
    r = client.invoke("add", args=[40, 2], node=addr(node))
    assert r.ok and r.output == b"42"


def test_async_then_wait(node, client):
    eid = client.submit("upper", b"abc", node=addr(node))
    r = client.wait(eid, timeout=10, node=addr(node))
    assert r.execution_id == eid and r.ok and r.output == b"ABC"


def test_stream_yields_log_chunks_before_result(node, client):
    items = list(client.stream("hello", b"x", node=addr(node)))
    assert isinstance(items[-1], object) and not isinstance(items[-1], bytes)
    logs = [i for i in items if isinstance(i, bytes)]
    assert logs, "expected stderr chunks before the result"
    assert items[-1].output == b"hello, x"


def test_pool_reuse_seen_in_counters(node, client):
    before = {f.name: f for f in client.functions(node=addr(node))}["upper"]
    for _ in range(5):
        assert client.invoke("upper", b"q", node=addr(node)).output == b"Q"
    after = {f.name: f for f in client.functions(node=addr(node))}["upper"]
    assert after.hits >= before.hits + 5
    assert after.misses == before.misses  # min_warm=1 pre-warmed it: no cold start


def test_failures_are_typed_and_node_keeps_serving(node, client):
    r = client.invoke("fail", node=addr(node))
    assert r.status == "failed" and r.info.error.code == "FUNCTION_ERROR"
    with pytest.raises(errors.FunctionError):
        r.raise_for_status()
    r = client.invoke("sleepy", node=addr(node), timeout=0.3)
    assert r.status == "timed_out" and r.info.error.code == "DEADLINE_EXCEEDED"
    with pytest.raises(errors.NotFound):
        client.invoke("nope", node=addr(node))
    with pytest.raises(errors.InvalidArgument):
        client.deploy(P.FunctionSpec(name="badwasm", runtime="wasm", artifact=b"\0asm garbage"),
                      node=addr(node))
    assert client.invoke("hello", b"still", node=addr(node)).output == b"hello, still"


def test_unavailable_runtime_reported_and_refused(node, client):
    info = client.nodes()[0]
    assert "docker" not in info.runtimes and "docker" in info.unavailable
    with pytest.raises(errors.Unavailable, match="docker"):
        client.deploy(P.FunctionSpec(name="c", runtime="docker", image="x", command=["true"]),
                      node=addr(node))


def test_cancel_running_execution(node, client):
    eid = client.submit("sleepy", node=addr(node))
    time.sleep(0.3)
    client.cancel(eid, node=addr(node))
    r = client.wait(eid, timeout=10, node=addr(node))
    assert r.status == "cancelled"
    with pytest.raises(errors.NotFound):
        client.cancel("no-such-execution", node=addr(node))


def test_concurrency_limit_answers_resource_exhausted(node, client):
    # earlier tests' executions must have wound down (heartbeats report running)
    wait_for(lambda: not client.nodes()[0].usage.running, 10, "earlier executions wound down",
             step=0.1)
    time.sleep(0.3)
    ids = []
    try:
        refused = None
        for _ in range(8):
            try:
                ids.append(client.submit("sleepy", node=addr(node)))
            except errors.ResourceExhausted as exc:
                refused = exc
                break
        assert refused is not None, "the node never refused"
        # refused exactly when max_concurrency (4) executions were running
        running = [e for e in ids
                   if client.execution(e, node=addr(node)).status in ("pending", "running")]
        assert len(running) == 4, [client.execution(e, node=addr(node)).info for e in ids]
    finally:
        for eid in ids:
            try:
                client.cancel(eid, node=addr(node))
            except errors.InvalidArgument:
                pass  # already finished
        for eid in ids:
            assert client.wait(eid, timeout=10, node=addr(node)).status in P.TERMINAL
    assert client.invoke("add", args=[1, 1], node=addr(node)).output == b"2"

def test_cli_invoke_modes(node, tmp_path):
    def cli(*a, input=None):
        return spear_cli(*a, "--sms", node.sms_addr, input=input, text=False, timeout=30)

    r = cli("invoke", "hello", "cli", "--node", addr(node))
    assert r.returncode == 0 and r.stdout.strip() == b"hello, cli"
    f = tmp_path / "in.txt"
    f.write_bytes(b"file")
    r = cli("invoke", "upper", "-i", str(f), "--node", addr(node))
    assert r.returncode == 0 and r.stdout.strip() == b"FILE"
    r = cli("invoke", "upper", "-", "--node", addr(node), input=b"stdin")
    assert r.returncode == 0 and r.stdout.strip() == b"STDIN"
    r = cli("invoke", "hello", "s", "--stream", "--node", addr(node))
    assert r.returncode == 0 and r.stdout.strip() == b"hello, s" and r.stderr
    r = cli("invoke", "add", "--args", "5,6", "--async", "--node", addr(node))
    eid = r.stdout.decode().strip()
    assert r.returncode == 0 and is_uuid7(eid)
    r = cli("executions", eid, "--wait", "5", "--node", addr(node), "--json")
    assert r.returncode == 0 and b'"succeeded"' in r.stdout and b'"11"' in r.stdout
    r = cli("invoke", "fail", "--node", addr(node))
    assert r.returncode == 1 and b"FUNCTION_ERROR" in r.stderr
    r = cli("functions", "--node", addr(node), "--json")
    assert r.returncode == 0 and b'"upper"' in r.stdout


def test_sigterm_finishes_running_execution_then_exits(tmp_path):
    with Cluster(tmp_path / "c", spearlets=1) as c:
        c.start(wait=30)
        a = c.spearlet_addrs[0]
        with Client(c.sms_addr, timeout=20) as cl:
            cl.deploy(P.FunctionSpec(name="nap", runtime="process", command=["sleep", "1"]), node=a)
            eid = cl.submit("nap", node=a)
            time.sleep(0.2)
            c.spearlets[0].send_signal(signal.SIGTERM)
            r = cl.wait(eid, timeout=10, node=a)
            assert r.status == "succeeded"
            assert c.spearlets[0].wait(15) == 0
            assert cl.nodes() == []


def test_bad_input_gets_clear_codes(node, client):
    a = addr(node)
    with pytest.raises(errors.InvalidArgument, match="memory_mb"):
        client.deploy(P.FunctionSpec(name="big", runtime="process", command=["true"],
                                     limits=P.Limits(memory_mb=10**6)), node=a)
    with pytest.raises(errors.InvalidArgument, match="labels"):
        client.deploy(P.FunctionSpec(name="lbl", runtime="process", command=["true"],
                                     labels={"bad key!": "x"}), node=a)
    with pytest.raises(errors.InvalidArgument, match="env"):
        client.deploy(P.FunctionSpec(name="env", runtime="process", command=["true"],
                                     env={"1BAD": "x"}), node=a)
    with pytest.raises(errors.InvalidArgument, match="function"):
        client.invoke("bad name with spaces", node=a)
    with pytest.raises(errors.InvalidArgument, match="timeout"):
        client.invoke("add", args=[1, 1], node=a, timeout=10**6)
    with pytest.raises(errors.InvalidArgument):
        client.deploy(P.FunctionSpec(name="nocmd", runtime="process"), node=a)
    # an artifact bigger than a message body travels as a raw frame and is accepted
    big_wat = ADD_WAT + b";;" + b"x" * (5 * 1024 * 1024) + b"\n"
    client.deploy(P.FunctionSpec(name="bigart", runtime="wasm", handler="add",
                                 artifact=big_wat), node=a)
    assert client.invoke("bigart", args=[2, 2], node=a).output == b"4"
    assert client.invoke("add", args=[1, 1], node=a).output == b"2"


def test_cli_secret_env_and_idempotency_key(node):
    """``spear deploy --secret-env`` passes a value the SMS never shows back;
    ``spear invoke --idempotency-key`` runs once per key (async and sync)."""
    def cli(*a):
        return spear_cli(*a, "--sms", node.sms_addr, text=False, timeout=30)

    r = cli("deploy", "cli-secret", "--runtime", "process",
            "--command", "/bin/sh -c 'printf %s \"$TOKEN\"'",
            "--env", "PLAIN=p", "--secret-env", "TOKEN=s3cr3t-cli")
    assert r.returncode == 0, r.stderr
    with Client(node.sms_addr, timeout=20) as c:
        spec = c.function("cli-secret")
        assert spec.env == {"PLAIN": "p", "TOKEN": roles.SECRET} and spec.secret_env == ["TOKEN"]
        assert c.invoke("cli-secret").output == b"s3cr3t-cli"
        before = c.executions(function="cli-secret")[1]
    first = cli("invoke", "cli-secret", "--async", "--idempotency-key", "order-42")
    again = cli("invoke", "cli-secret", "--async", "--idempotency-key", "order-42")
    assert first.returncode == 0 and first.stdout == again.stdout and is_uuid7(first.stdout.decode().strip())
    sync = cli("invoke", "cli-secret", "--idempotency-key", "order-42", "--json")
    assert sync.returncode == 0 and first.stdout.decode().strip() in sync.stdout.decode()
    with Client(node.sms_addr, timeout=20) as c:
        assert c.executions(function="cli-secret")[1] == before + 1
    assert "s3cr3t-cli" not in (node.data / "sms.log").read_text()
