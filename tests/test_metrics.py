"""spear.metrics: registries, execution histograms, scrape-time collectors, /metrics over HTTP."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.utils import floatToGoString

from spear import errors
from spear import protocol as P
from spear.fast import SlotPool
from spear.metrics import (
    BUCKETS,
    CATALOG,
    OTHER,
    MetricsServer,
    SMSMetrics,
    SpearletMetrics,
    metric_names,
)
from spear.protocol import Capacity, NodeInfo, Usage
from spear.config import SMSConfig
from spear.sms.core import SMSCore
from spear.sms.events import (Commit, CommitSoon, Load, Loaded, Persist, Persisted, Received,
                              Send)
from spear.spearlet.resources import ResourceMonitor
from spear.store.memory import MemoryStore

T0 = 1_000_000.0


def value(reg: CollectorRegistry, metric: str, **labels) -> float | None:
    return reg.get_sample_value(metric, labels)


# ---------------------------------------------------------------- fakes


class FakePool:
    """What SpearletCollector reads of an InstancePool, over the real SlotPool kernel."""

    def __init__(self, size: int = 2) -> None:
        self.slots = SlotPool(size)
        self.cold_starts = 0
        self.waiting = 0

    def hit(self) -> None:
        slot = self.slots.acquire()
        assert slot >= 0
        self.slots.release(slot, 0.0)

    def miss_and_create(self) -> int:
        assert self.slots.acquire() < 0
        slot = self.slots.reserve()
        self.cold_starts += 1
        return slot


class FakeFunctions:
    def __init__(self) -> None:
        self.deployments: dict = {}
        self.running = 0
        self.max_concurrency = 64
        self.draining = False

    def deploy(self, name: str, pool: FakePool) -> None:
        spec = SimpleNamespace(name=name, runtime="wasm")
        self.deployments[name] = SimpleNamespace(spec=spec, pool=pool)


class FakeMonitor:
    def capacity(self) -> Capacity:
        return Capacity(cores=8.0, memory=16 << 30, disk=100 << 30, slots=64)

    def usage(self, *, running: int = 0, warm: int = 0) -> Usage:
        return Usage(cpu_percent=12.5, memory_used=3 << 30, memory_total=16 << 30,
                     disk_used=10 << 30, load1=0.75, net_rx=1000, net_tx=2000)


class FakeResults(list):
    """What SpearletCollector reads of the ResultBuffer: its length and ``dropped``."""

    dropped = 4


class FakeEndpoint:
    def __init__(self) -> None:
        self.received = self.sent = self.dropped = self.handler_errors = 0


class FakeRouter:
    def __init__(self) -> None:
        self.endpoint = FakeEndpoint()
        self.protocol_errors = 0
        self.denied = 0


class FakeDealer:
    def __init__(self) -> None:
        self.endpoint = FakeEndpoint()
        self.protocol_errors = 0

    def reconnect(self) -> None:  # as DealerPeer does: a fresh endpoint, counters at 0
        self.endpoint = FakeEndpoint()


def spearlet_metrics(**kw) -> tuple[SpearletMetrics, FakeFunctions]:
    m = SpearletMetrics(**kw)
    fns = FakeFunctions()
    m.watch(fns, FakeMonitor(), registered=lambda: True, reconnects=lambda: 3,
            results=FakeResults([1, 2]))
    m.watch_mesh({"router": FakeRouter(), "sms-link": FakeDealer()})
    return m, fns


def sms_metrics() -> tuple[SMSMetrics, SMSCore, MemoryStore]:
    """An SMS core that tells its metrics what happens, over an in-memory store."""
    m = SMSMetrics()
    store = MemoryStore()
    core = SMSCore(SMSConfig(), now=T0, metrics=m)
    m.watch(core.tasks, core.registry, core.table, store=store)
    m.watch_mesh({"router": FakeRouter()})
    return m, core, store


def feed(core: SMSCore, store: MemoryStore, msg, now: float, payload=None) -> list:
    """Hand ``msg`` to the core as the daemon would; the messages it sends."""
    sent, pending = [], [Received(b"client", "", "", msg, payload)]
    while pending:
        for ins in core.handle(pending.pop(0), now):
            if isinstance(ins, Persist):
                store.write_batch(ins.puts, ins.deletes, sync=ins.sync)
                pending.append(Persisted(ins.token))
            elif isinstance(ins, Load):
                pending.append(Loaded(ins.token, [store.get(k) for k in ins.keys]))
            elif isinstance(ins, CommitSoon):
                pending.append(Commit())
            elif isinstance(ins, Send):
                sent.append(ins.msg)
    return sent


# ---------------------------------------------------------------- registries


def test_each_daemon_has_its_own_registry():
    before = set(metric_names(REGISTRY))
    a, _ = spearlet_metrics()
    b, _ = spearlet_metrics()
    a.execution_finished("f", "wasm", "succeeded", 0.0, 0.0, 0.001, 0.001)
    assert value(a.registry, "spear_spearlet_executions_total",
                 function="f", runtime="wasm", status="succeeded") == 1
    assert value(b.registry, "spear_spearlet_executions_total",
                 function="f", runtime="wasm", status="succeeded") is None
    assert set(metric_names(REGISTRY)) == before  # the global registry is untouched


def test_a_given_registry_is_used():
    reg = CollectorRegistry()
    m = SMSMetrics(reg, process=False)
    assert m.registry is reg
    assert "spear_sms_executions_total" in metric_names(reg)
    assert "process_cpu_seconds_total" not in metric_names(reg)


def test_the_daemons_start_without_prometheus_client_until_metrics_are_read():
    """prometheus-client costs ~50 ms of imports at every daemon start: it is loaded
    when /metrics is served or read, and executions recorded before count."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import spear.sms.daemon, spear.spearlet.daemon\n"
        "from spear.metrics import SpearletMetrics\n"
        "m = SpearletMetrics()\n"
        "m.watch_mesh({})\n"
        "m.execution_finished('f', 'wasm', 'succeeded', 0.0, 0.0, 0.001, 0.001)\n"
        "print('prometheus_client' in sys.modules)\n"
        "from spear.metrics import metric_names\n"
        "names = metric_names(m.registry)\n"
        "print('prometheus_client' in sys.modules, 'spear_mesh_messages_sent_total' in names,\n"
        "      'process_cpu_seconds_total' in names)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True", "True"]
    m, _ = spearlet_metrics()
    m.execution_finished("f", "wasm", "succeeded", 0.0, 0.0, 0.001, 0.001)
    assert value(m.registry, "spear_spearlet_executions_total",
                 function="f", runtime="wasm", status="succeeded") == 1


def test_the_registry_is_made_once_when_threads_ask_for_it_together(monkeypatch):
    """A scrape or reader thread and the loop asking at once get one registry,
    every collector registered on it once (none lost with a second registry)."""
    import time

    import prometheus_client

    made = []

    class Slow(CollectorRegistry):
        def __init__(self, *a, **kw):
            made.append(self)
            time.sleep(0.05)
            super().__init__(*a, **kw)

    monkeypatch.setattr(prometheus_client, "CollectorRegistry", Slow)
    m = SpearletMetrics(process=False)
    got, errs = [], []

    def ask():
        try:
            got.append(m.registry)
        except Exception as exc:  # noqa: BLE001
            errs.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    m.watch_mesh({})  # while the registry is being made
    for t in threads:
        t.join()
    assert not errs and len(made) == 1 and got[0] is got[1], (errs, made)
    assert "spear_mesh_messages_sent_total" in metric_names(got[0])


def test_catalog_matches_what_the_registries_expose():
    sp, _ = spearlet_metrics()
    sms, *_ = sms_metrics()
    exposed = metric_names(sp.registry) | metric_names(sms.registry)
    for name, spec in CATALOG.items():
        expected = name + ("_bucket" if spec.kind == "histogram" else "")
        assert expected in exposed, name
    spear_families = {n for n in exposed if n.startswith("spear_")}
    for n in spear_families:
        base = n
        for suffix in ("_bucket", "_sum", "_count"):
            if n.endswith(suffix) and n[: -len(suffix)] in CATALOG:
                base = n[: -len(suffix)]
        assert base in CATALOG, n
    # build info names version and role
    assert value(sp.registry, "spear_build_info", version=__import__("spear").__version__,
                 role="spearlet") == 1


def test_counter_families_end_in_total_and_help_is_set():
    for name, spec in CATALOG.items():
        assert spec.help
        assert name.endswith("_total") == (spec.kind == "counter"), name


# ---------------------------------------------------------------- executions


def test_spearlet_execution_counts_and_histograms():
    m, _ = spearlet_metrics()
    reg = m.registry
    m.execution_finished("add", "wasm", "succeeded", 0.0, 0.0, 0.00002, 0.00003)
    m.execution_finished("add", "wasm", "succeeded", 0.0002, 0.004, 0.3, 0.31)
    m.execution_finished("add", "wasm", "timed_out", 0.0, 0.0, 30.0, 30.0, "DEADLINE_EXCEEDED")
    lab = {"function": "add", "runtime": "wasm"}
    assert value(reg, "spear_spearlet_executions_total", status="succeeded", **lab) == 2
    assert value(reg, "spear_spearlet_executions_total", status="timed_out", **lab) == 1
    assert value(reg, "spear_spearlet_execution_errors_total", function="add",
                 code="DEADLINE_EXCEEDED") == 1
    # every execution is observed for queue, run and end to end; cold start only when cold
    for stage, count in (("queue", 3), ("run", 3), ("end_to_end", 3), ("cold_start", 1)):
        assert value(reg, f"spear_spearlet_execution_{stage}_seconds_count", **lab) == count
    assert value(reg, "spear_spearlet_execution_cold_start_seconds_sum", **lab) == pytest.approx(0.004)
    assert value(reg, "spear_spearlet_execution_run_seconds_sum", **lab) == pytest.approx(30.30002)
    # buckets are cumulative
    run = "spear_spearlet_execution_run_seconds_bucket"
    assert value(reg, run, le="0.0001", **lab) == 1
    assert value(reg, run, le="0.1", **lab) == 1
    assert value(reg, run, le="0.3", **lab) == 2
    assert value(reg, run, le="30.0", **lab) == 3
    assert value(reg, run, le="+Inf", **lab) == 3
    assert value(reg, "spear_spearlet_execution_cold_start_seconds_bucket", le="0.003", **lab) == 0
    assert value(reg, "spear_spearlet_execution_cold_start_seconds_bucket", le="0.01", **lab) == 1


def test_a_value_on_a_bucket_bound_counts_in_that_bucket():
    m, _ = spearlet_metrics()
    for b in BUCKETS:
        m.execution_finished("f", "process", "succeeded", b, 0.0, b, b)
    lab = {"function": "f", "runtime": "process"}
    for i, b in enumerate(BUCKETS):  # le is inclusive
        assert value(m.registry, "spear_spearlet_execution_queue_seconds_bucket",
                     le=floatToGoString(b), **lab) == i + 1
    assert value(m.registry, "spear_spearlet_execution_queue_seconds_bucket", le="+Inf",
                 **lab) == len(BUCKETS)


def test_statuses_of_one_function_share_its_histograms():
    m, _ = spearlet_metrics()
    m.execution_finished("f", "process", "succeeded", 0, 0, 0.1, 0.1)
    m.execution_finished("f", "process", "failed", 0, 0, 0.1, 0.1, "FUNCTION_ERROR")
    assert value(m.registry, "spear_spearlet_execution_run_seconds_count",
                 function="f", runtime="process") == 2


def test_unknown_runtime_and_function_cap():
    m, _ = spearlet_metrics(max_functions=2)
    m.execution_finished("gone", "", "failed", 0, 0, 0, 0, "NOT_FOUND")
    assert value(m.registry, "spear_spearlet_executions_total",
                 function="gone", runtime="unknown", status="failed") == 1
    for name in ("a", "b", "c"):
        m.execution_finished(name, "wasm", "succeeded", 0, 0, 0.001, 0.001)
        m.execution_finished(name, "wasm", "failed", 0, 0, 0.001, 0.001, "FUNCTION_ERROR")
    reg = m.registry
    # "gone" and "a" took the two places; b and c share the _other series
    assert value(reg, "spear_spearlet_executions_total", function="a", runtime="wasm",
                 status="succeeded") == 1
    assert value(reg, "spear_spearlet_executions_total", function="b", runtime="wasm",
                 status="succeeded") is None
    assert value(reg, "spear_spearlet_executions_total", function=OTHER, runtime="wasm",
                 status="succeeded") == 2
    assert value(reg, "spear_spearlet_execution_run_seconds_count", function=OTHER,
                 runtime="wasm") == 4
    assert value(reg, "spear_spearlet_execution_errors_total", function=OTHER,
                 code="FUNCTION_ERROR") == 2


def test_rejections_by_code():
    m, _ = spearlet_metrics()
    m.rejected("RESOURCE_EXHAUSTED")
    m.rejected("RESOURCE_EXHAUSTED")
    m.rejected("UNAVAILABLE")
    assert value(m.registry, "spear_spearlet_rejected_total", code="RESOURCE_EXHAUSTED") == 2
    assert value(m.registry, "spear_spearlet_rejected_total", code="UNAVAILABLE") == 1


def test_sms_record_from_execution_info():
    m = SMSMetrics(process=False)
    info = P.ExecutionInfo(execution_id="e1", function="f", status="failed",
                           submitted_at=T0, finished_at=T0 + 2.0,
                           error=P.ErrorInfo(code="RESOURCE_EXHAUSTED", message="full"))
    m.record(info, "process", dispatched_at=T0 + 0.5)
    reg = m.registry
    lab = {"function": "f", "runtime": "process"}
    assert value(reg, "spear_sms_executions_total", status="failed", **lab) == 1
    assert value(reg, "spear_sms_execution_queue_seconds_sum", **lab) == pytest.approx(0.5)
    assert value(reg, "spear_sms_execution_end_to_end_seconds_sum", **lab) == pytest.approx(2.0)
    assert value(reg, "spear_sms_execution_errors_total", function="f",
                 code="RESOURCE_EXHAUSTED") == 1
    # never dispatched: all of it was queue time
    m.record(P.ExecutionInfo(execution_id="e2", function="f", status="failed",
                             submitted_at=T0, finished_at=T0 + 30.0), "process")
    assert value(reg, "spear_sms_execution_queue_seconds_sum", **lab) == pytest.approx(30.5)


# ---------------------------------------------------------------- spearlet state


def test_pool_counters_are_read_at_scrape_time():
    m, fns = spearlet_metrics()
    pool = FakePool(2)
    fns.deploy("f", pool)
    slot = pool.miss_and_create()
    pool.slots.release(slot, 0.0)
    pool.hit()
    pool.hit()
    reg = m.registry
    assert value(reg, "spear_spearlet_pool_hits_total", function="f") == 2
    assert value(reg, "spear_spearlet_pool_misses_total", function="f") == 1
    assert value(reg, "spear_spearlet_pool_cold_starts_total", function="f") == 1
    assert value(reg, "spear_spearlet_pool_evictions_total", function="f") == 0
    assert value(reg, "spear_spearlet_pool_instances", function="f", state="idle") == 1
    assert value(reg, "spear_spearlet_pool_instances", function="f", state="busy") == 0
    assert value(reg, "spear_spearlet_pool_max_instances", function="f") == 2
    assert pool.slots.evict(100.0, 1.0, 0) == [slot]
    pool.waiting = 1
    assert value(reg, "spear_spearlet_pool_evictions_total", function="f") == 1
    assert value(reg, "spear_spearlet_pool_waiting", function="f") == 1
    assert value(reg, "spear_spearlet_deployed_functions") == 1


def test_pool_counters_stay_monotonic_when_a_function_is_redeployed():
    m, fns = spearlet_metrics()
    old = FakePool()
    fns.deploy("f", old)
    old.miss_and_create()
    old.slots.release(0, 0.0)
    for _ in range(5):
        old.hit()
    assert value(m.registry, "spear_spearlet_pool_hits_total", function="f") == 5
    new = FakePool()  # a redeploy: new pool, counters from zero
    fns.deploy("f", new)
    new.miss_and_create()
    new.slots.release(0, 0.0)
    for _ in range(7):  # more than the old pool had: only identity can tell
        new.hit()
    assert value(m.registry, "spear_spearlet_pool_hits_total", function="f") == 12
    assert value(m.registry, "spear_spearlet_pool_misses_total", function="f") == 2
    del fns.deployments["f"]  # removed: the series goes away
    assert value(m.registry, "spear_spearlet_pool_hits_total", function="f") is None


def test_running_draining_link_and_node_figures():
    m, fns = spearlet_metrics()
    reg = m.registry
    fns.running = 5
    fns.draining = True
    assert value(reg, "spear_spearlet_running_executions") == 5
    assert value(reg, "spear_spearlet_max_concurrency") == 64
    assert value(reg, "spear_spearlet_draining") == 1
    assert value(reg, "spear_spearlet_sms_registered") == 1
    assert value(reg, "spear_spearlet_sms_reconnects_total") == 3
    assert value(reg, "spear_spearlet_results_unconfirmed") == 2
    assert value(reg, "spear_spearlet_results_dropped_total") == 4
    assert value(reg, "spear_node_capacity_cores") == 8
    assert value(reg, "spear_node_capacity_memory_bytes") == 16 << 30
    assert value(reg, "spear_node_capacity_slots") == 64
    assert value(reg, "spear_node_cpu_percent") == 12.5
    assert value(reg, "spear_node_memory_used_bytes") == 3 << 30
    assert value(reg, "spear_node_load1") == 0.75
    assert value(reg, "spear_node_network_transmit_bytes_total") == 2000


def test_real_resource_monitor(tmp_path):
    m = SpearletMetrics(process=False)
    m.watch(FakeFunctions(), ResourceMonitor(str(tmp_path), slots=4))
    assert value(m.registry, "spear_node_capacity_cores") >= 1
    assert value(m.registry, "spear_node_capacity_slots") == 4
    assert value(m.registry, "spear_node_memory_used_bytes") > 0


# ---------------------------------------------------------------- mesh


def test_mesh_counters_and_reconnects():
    m = SpearletMetrics(process=False)
    router, link = FakeRouter(), FakeDealer()
    m.watch_mesh({"router": router, "sms-link": link})
    reg = m.registry
    router.endpoint.received, router.endpoint.sent, router.endpoint.dropped = 10, 9, 1
    router.protocol_errors, router.denied = 2, 3
    link.endpoint.sent = 4
    link.protocol_errors = 1
    assert value(reg, "spear_mesh_messages_received_total", socket="router") == 10
    assert value(reg, "spear_mesh_messages_sent_total", socket="router") == 9
    assert value(reg, "spear_mesh_messages_dropped_total", socket="router") == 1
    assert value(reg, "spear_mesh_protocol_errors_total", socket="router") == 2
    assert value(reg, "spear_mesh_denied_total", socket="router") == 3
    assert value(reg, "spear_mesh_protocol_errors_total", socket="sms-link") == 1
    assert value(reg, "spear_mesh_denied_total", socket="sms-link") is None  # a DEALER has none
    link.reconnect()
    link.endpoint.sent = 1
    assert value(reg, "spear_mesh_messages_sent_total", socket="sms-link") == 5


def test_mesh_collector_reads_a_real_router():
    from spear.mesh import RouterServer

    server = RouterServer("t", {})
    try:
        m = SMSMetrics(process=False)
        m.watch_mesh({"router": server})
        server.protocol_errors = 4
        assert value(m.registry, "spear_mesh_protocol_errors_total", socket="router") == 4
        assert value(m.registry, "spear_mesh_messages_received_total", socket="router") == 0
    finally:
        server.close()


# ---------------------------------------------------------------- SMS state


def test_sms_queue_executions_and_nodes():
    m, core, store = sms_metrics()
    nodes, table = core.registry, core.table
    reg = m.registry
    feed(core, store, P.DeployFunction(id=1, spec=P.FunctionSpec(name="f", runtime="process",
                                                                 command=["cat"])), T0)
    eids = []
    for i in range(3):  # no node: the scheduler queues (startup grace) rather than fails
        # persisted, acknowledged, then placed (the group commit)
        (acc,) = feed(core, store, P.Invoke(id=i + 1, function="f", mode="async"), T0, b"")
        eids.append(acc.execution_id)
    assert value(reg, "spear_sms_queue_depth") == 3
    assert value(reg, "spear_sms_executions_active") == 3
    assert value(reg, "spear_sms_submitted_total") == 3
    assert value(reg, "spear_sms_functions") == 1
    feed(core, store, P.CancelExecution(id=9, execution_id=eids[0]), T0 + 1)  # ends it: recorded
    assert value(reg, "spear_sms_executions_total", function="f", runtime="process",
                 status="cancelled") == 1
    assert value(reg, "spear_sms_execution_end_to_end_seconds_sum", function="f",
                 runtime="process") == pytest.approx(1.0)
    assert value(reg, "spear_sms_queue_depth") == 2

    for nid in ("n1", "n2"):
        info = nodes.register(NodeInfo(node_id=nid, name=nid.upper(),
                                       capacity=Capacity(cores=4.0, memory=1 << 30),
                                       usage=Usage(running=2)), T0)
        table.upsert(info)
    nodes.tick(T0 + 10)  # no heartbeats: both turn unhealthy
    nodes.heartbeat("n1", Usage(running=2), T0 + 10)
    assert value(reg, "spear_sms_nodes", state="ready") == 1
    assert value(reg, "spear_sms_nodes", state="unhealthy") == 1
    assert value(reg, "spear_sms_nodes", state="draining") == 0
    assert value(reg, "spear_sms_node_up", node_id="n1", name="N1") == 1
    assert value(reg, "spear_sms_node_up", node_id="n2", name="N2") == 0
    assert value(reg, "spear_sms_cluster_capacity_cores") == 4
    assert value(reg, "spear_sms_cluster_capacity_memory_bytes") == 1 << 30
    assert value(reg, "spear_sms_cluster_running") == 2
    assert value(reg, "spear_sms_placement_policy_info", policy="baseline") == 1
    assert value(reg, "spear_sms_model_fallbacks_total", reason="history") == 0
    core.tasks.models.predict("f", 0)  # (what a learned policy asks at dispatch)
    assert value(reg, "spear_sms_model_fallbacks_total", reason="history") == 1
    assert value(reg, "spear_sms_model_fallbacks_total", reason="function_node_type") == 0
    core.tasks.models.fallbacks["function_node_type"] += 1  # (a pair's factor set aside)
    assert value(reg, "spear_sms_model_fallbacks_total", reason="function_node_type") == 1
    assert value(reg, "spear_sms_cluster_reserved_cores") is not None


def test_sms_event_counters():
    m = SMSMetrics(process=False)
    m.node_event("unhealthy")
    m.node_event("gone")
    m.node_event("gone")
    m.dispatch_refused("RESOURCE_EXHAUSTED")
    m.rejected("RESOURCE_EXHAUSTED")
    m.watch(SimpleNamespace(queued=0, active=lambda: 0, functions={}, counts={}),
            SimpleNamespace(nodes={}))
    reg = m.registry
    assert value(reg, "spear_sms_node_transitions_total", state="gone") == 2
    assert value(reg, "spear_sms_dispatch_refusals_total", code="RESOURCE_EXHAUSTED") == 1
    assert value(reg, "spear_sms_rejected_total", code="RESOURCE_EXHAUSTED") == 1
    assert value(reg, "spear_sms_cluster_reserved_cores") is None  # no table given


def test_a_dict_changing_under_the_scrape_is_retried():
    m = SMSMetrics(process=False)
    calls = []

    def active():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("dictionary changed size during iteration")
        return 7

    m.watch(SimpleNamespace(queued=0, active=active, functions={}, counts={}),
            SimpleNamespace(nodes={}))
    assert value(m.registry, "spear_sms_executions_active") == 7


# ---------------------------------------------------------------- HTTP


def scrape(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.headers["Content-Type"], resp.read().decode()


def test_metrics_endpoint_serves_text_format_on_a_free_port():
    m, fns = spearlet_metrics()
    server = m.serve("127.0.0.1", 0)
    try:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        ctype, body = scrape(server.url)
        assert ctype.startswith("text/plain")
        assert "# TYPE spear_spearlet_executions_total counter" in body
        assert "spear_spearlet_running_executions 0.0" in body
        m.execution_finished("f", "wasm", "succeeded", 0, 0, 0.001, 0.001)
        fns.running = 2
        _, body = scrape(server.url)
        assert 'spear_spearlet_executions_total{function="f",runtime="wasm",status="succeeded"} 1.0' in body
        assert "spear_spearlet_running_executions 2.0" in body
    finally:
        m.close()
    with pytest.raises(urllib.error.URLError):
        scrape(server.url)


def test_two_servers_and_a_busy_port():
    a = MetricsServer(CollectorRegistry(), "127.0.0.1", 0)
    try:
        b = MetricsServer(CollectorRegistry(), "127.0.0.1", 0)
        b.close()
        assert a.port != b.port
        with pytest.raises(errors.ConfigError, match=f"127.0.0.1:{a.port}"):
            MetricsServer(CollectorRegistry(), "127.0.0.1", a.port)
    finally:
        a.close()


def test_scrapes_while_the_loop_thread_records():
    m, fns = spearlet_metrics()
    fns.deploy("f", FakePool())
    stop = threading.Event()
    failures: list[BaseException] = []

    def scraper() -> None:
        try:
            while not stop.is_set():
                generate_latest(m.registry)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    t = threading.Thread(target=scraper)
    t.start()
    try:
        for i in range(20_000):
            m.execution_finished(f"f{i % 50}", "wasm", "succeeded", 0.0, 0.0, 1e-5, 2e-5)
    finally:
        stop.set()
        t.join(10)
    assert not failures
    total = sum(value(m.registry, "spear_spearlet_executions_total", function=f"f{i}",
                      runtime="wasm", status="succeeded") for i in range(50))
    assert total == 20_000


def test_operations_doc_lists_every_metric():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    missing = [name for name in CATALOG if f"`{name}`" not in doc]
    assert not missing, f"docs/operations.md lacks {missing}"
