"""Prometheus metrics of the SMS and the Spearlet.

One :class:`~prometheus_client.CollectorRegistry` per daemon (never the
library's global one), served on ``/metrics`` by a daemon thread so a scrape
never runs on the event loop.

Two kinds of figures, chosen by what they cost the hot path:

* **Executions** (counts and latency histograms) are recorded by one call per
  finished execution, :meth:`SpearletMetrics.execution_finished` /
  :meth:`SMSMetrics.execution_finished`. They bump plain ints in per-series
  slots (``bisect`` picks the bucket); no lock, no labelled child lookup.
  A collector turns the slots into counter and histogram families at scrape
  time. Call them from the event-loop thread only (one writer).
* **State** (pool hits/misses/evictions, running executions, queue depth,
  nodes, node capacity and usage, mesh message counters) is never pushed: a
  collector reads the live objects when Prometheus scrapes, so the hot path
  pays nothing. Counters read from objects that get replaced (a redeployed
  function's pool, a reconnected DEALER's endpoint) stay monotonic.

:data:`CATALOG` names every family, its type, help and labels; the collectors
build their families from it, and docs/tests check against it.

The scrape thread reads daemon state without the loop's cooperation. That is
safe under the GIL for what is read here (ints, ``len()``, ``list(dict)``);
a dict changing size mid-iteration is retried.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Info, PlatformCollector, ProcessCollector
from prometheus_client.exposition import start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from . import __version__, errors

__all__ = [
    "BUCKETS", "CATALOG", "MetricSpec", "MetricsServer", "SMSMetrics", "SpearletMetrics",
    "metric_names",
]

#: latency buckets (seconds), about 3x apart: inline wasm calls take tens of µs, docker
#: runs minutes. Few on purpose: every bucket is a line per function per stage, and
#: formatting lines is what a scrape spends its time on.
BUCKETS: tuple[float, ...] = (
    0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0,
)
_LE = [floatToGoString(b) for b in BUCKETS] + ["+Inf"]
_NB = len(BUCKETS) + 1  # slots per histogram, the last one is +Inf

#: label value used for functions beyond ``max_functions`` (names start alphanumeric)
OTHER = "_other"


@dataclass(frozen=True)
class MetricSpec:
    """One metric family as exposed: name (counters end in ``_total``), type, help, labels."""

    name: str
    kind: str  # "counter" | "gauge" | "histogram" | "info"
    help: str
    labels: tuple[str, ...] = ()

    def family(self) -> Metric:
        """An empty family to fill with ``add_metric``."""
        cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
               "histogram": HistogramMetricFamily, "info": InfoMetricFamily}[self.kind]
        return cls(self.name, self.help, labels=self.labels)


def _specs(*rows: tuple) -> dict[str, MetricSpec]:
    return {r[0]: MetricSpec(*r) for r in rows}


_FR, _FRS = ("function", "runtime"), ("function", "runtime", "status")

_WHERE = {"sms": "through the SMS", "spearlet": "on this node"}
_QUEUE_HELP = {
    "sms": "Submit to (last) dispatch: time spent waiting for a node with room.",
    "spearlet": "Waiting for a pool instance; cold start excluded (0 on the inline path).",
}

_EXEC = {
    role: _specs(
        (f"spear_{role}_executions_total", "counter",
         f"Executions finished {_WHERE[role]}, by function, runtime and terminal status.", _FRS),
        (f"spear_{role}_execution_errors_total", "counter",
         f"Executions finished {_WHERE[role]} with an error, by function and error code.",
         ("function", "code")),
        (f"spear_{role}_rejected_total", "counter",
         "Invocations refused before an execution existed, by error code.", ("code",)),
        (f"spear_{role}_execution_queue_seconds", "histogram", _QUEUE_HELP[role], _FR),
        (f"spear_{role}_execution_end_to_end_seconds", "histogram",
         "Submit to result, as measured " + _WHERE[role] + ".", _FR),
    )
    for role in ("sms", "spearlet")
}
_EXEC["spearlet"].update(_specs(
    ("spear_spearlet_execution_cold_start_seconds", "histogram",
     "Instance creation time of executions that needed one (warm hits are not observed).", _FR),
    ("spear_spearlet_execution_run_seconds", "histogram", "Time inside the runtime.", _FR),
))

_COMMON = _specs(
    ("spear_build_info", "info", "Version and role of this Spear daemon.", ("version", "role")),
)

_MESH = _specs(*[
    (f"spear_mesh_{n}_total", "counter", h, ("socket",)) for n, h in (
        ("messages_received", "Multipart messages received on the socket."),
        ("messages_sent", "Multipart messages sent on the socket."),
        ("messages_dropped", "Sends that failed (peer gone or high-water mark reached)."),
        ("protocol_errors", "Frames that failed to decode or were not accepted there."),
        ("denied", "Messages refused because the caller's role may not send them (CURVE)."),
        ("handler_errors", "Handlers that raised an unexpected exception."),
    )
])

_SMS_STATE = _specs(
    ("spear_sms_queue_depth", "gauge", "Executions waiting in the SMS queue for capacity."),
    ("spear_sms_executions_active", "gauge", "Executions queued or placed on a node."),
    ("spear_sms_functions", "gauge", "Functions registered with the SMS."),
    ("spear_sms_loop_stalls_total", "counter",
     "Times the SMS's own event loop stalled (paused, GC, swap) for more than 0.5 s."),
    ("spear_sms_loop_stalled_seconds_total", "counter", "Seconds the SMS's loop spent stalled."),
    ("spear_sms_store_healthy", "gauge",
     "1 while store writes succeed; 0 while the SMS is read-only after a failed write."),
    ("spear_sms_store_write_errors_total", "counter", "Store writes that failed (disk full, I/O errors)."),
    ("spear_sms_submitted_total", "counter", "Executions accepted by the SMS."),
    ("spear_sms_retries_total", "counter", "Executions retried on another node after a node loss."),
    ("spear_sms_late_results_total", "counter", "Results that arrived for an already finished execution."),
    ("spear_sms_forged_reports_total", "counter",
     "Results and log chunks dropped because they came from a node the execution was never dispatched to."),
    ("spear_sms_dispatch_refusals_total", "counter",
     "Dispatches a node refused (spilled to another node), by error code.", ("code",)),
    ("spear_sms_node_transitions_total", "counter",
     "Node state changes, by the state entered.", ("state",)),
    ("spear_sms_nodes", "gauge", "Registered nodes by state.", ("state",)),
    ("spear_sms_node_up", "gauge", "1 if the node is ready, 0 if unhealthy or draining.",
     ("node_id", "name")),
    ("spear_sms_cluster_capacity_cores", "gauge", "Logical cores of the ready nodes."),
    ("spear_sms_cluster_capacity_memory_bytes", "gauge", "Memory of the ready nodes."),
    ("spear_sms_cluster_reserved_cores", "gauge", "Cores reserved by placed executions."),
    ("spear_sms_cluster_reserved_memory_bytes", "gauge", "Memory reserved by placed executions."),
    ("spear_sms_cluster_running", "gauge", "Running executions the ready nodes last reported."),
)

_SPEARLET_STATE = _specs(
    ("spear_spearlet_running_executions", "gauge", "Executions running on this node (async path)."),
    ("spear_spearlet_max_concurrency", "gauge", "Executions this node accepts at once."),
    ("spear_spearlet_draining", "gauge", "1 while the node is stopping and refuses new work."),
    ("spear_spearlet_deployed_functions", "gauge", "Functions deployed on this node."),
    ("spear_spearlet_sms_registered", "gauge", "1 while this node is registered with the SMS."),
    ("spear_spearlet_sms_reconnects_total", "counter", "Times the link to the SMS was rebuilt."),
    ("spear_spearlet_pool_hits_total", "counter", "Acquires served by a warm instance.", ("function",)),
    ("spear_spearlet_pool_misses_total", "counter", "Acquires that found no warm instance.", ("function",)),
    ("spear_spearlet_pool_evictions_total", "counter", "Idle instances evicted after their TTL.",
     ("function",)),
    ("spear_spearlet_pool_cold_starts_total", "counter", "Instances created.", ("function",)),
    ("spear_spearlet_pool_instances", "gauge", "Live instances by state (idle, busy).",
     ("function", "state")),
    ("spear_spearlet_pool_max_instances", "gauge", "Pool size limit (pool.max).", ("function",)),
    ("spear_spearlet_pool_waiting", "gauge", "Callers waiting for an instance of a full pool.",
     ("function",)),
    ("spear_node_capacity_cores", "gauge", "Logical cores of this node."),
    ("spear_node_capacity_memory_bytes", "gauge", "Memory of this node."),
    ("spear_node_capacity_disk_bytes", "gauge", "Disk size under the node's data directory."),
    ("spear_node_capacity_slots", "gauge", "Concurrent executions the node advertises (0: no limit)."),
    ("spear_node_cpu_percent", "gauge", "CPU use of the host, percent of all cores."),
    ("spear_node_memory_used_bytes", "gauge", "Memory in use on the host."),
    ("spear_node_disk_used_bytes", "gauge", "Disk in use under the data directory."),
    ("spear_node_load1", "gauge", "One-minute load average."),
    ("spear_node_network_receive_bytes_total", "counter", "Bytes received by the host."),
    ("spear_node_network_transmit_bytes_total", "counter", "Bytes sent by the host."),
)

#: every family Spear itself defines (process_* and python_info come from prometheus-client)
CATALOG: dict[str, MetricSpec] = {
    **_COMMON, **_MESH, **_EXEC["sms"], **_SMS_STATE, **_EXEC["spearlet"], **_SPEARLET_STATE,
}


def metric_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry can expose (``x_total``, ``x_bucket``...).

    Works on empty families too, so it lists metrics that have no sample yet.
    """
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("_sum", "_count")}
    out: set[str] = set()
    for fam in registry.collect():
        if fam.type == "info":
            out.add(fam.name if fam.name.endswith("_info") else fam.name + "_info")
        for suffix in suffixes.get(fam.type, ("",) if fam.type != "info" else ()):
            out.add(fam.name + suffix)
        out.update(s.name for s in fam.samples)
    return out


def _snapshot(read: Callable[[], Any], default: Any) -> Any:
    """Call ``read`` from the scrape thread, retrying if the loop mutated a dict under it."""
    for _ in range(5):
        try:
            return read()
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return default


class _Monotonic:
    """Keeps counters read from replaceable objects monotonic across replacements.

    A new source object (by identity), or a value that went down, means the old
    source is gone: its last value is carried into a base. Increments between the
    last scrape and the replacement are lost; a reset seen by Prometheus would
    lose them too, and a replacement it cannot see would lose more.
    """

    def __init__(self) -> None:
        self._seen: dict[Any, tuple[Any, float, float]] = {}

    def __call__(self, key: Any, source: Any, value: float) -> float:
        prev = self._seen.get(key)
        base = 0.0
        if prev is not None:
            ref, last, base = prev
            if ref() is not source or value < last:
                base += last
        try:
            ref = weakref.ref(source)
        except TypeError:  # not weak-referenceable: compare values only
            ref = (lambda s: lambda: s)(source)
        self._seen[key] = (ref, value, base)
        return base + value

    def keep_only(self, keys: Iterable[Any]) -> None:
        """Forget series whose source went away for good (a removed function)."""
        live = set(keys)
        for key in [k for k in self._seen if k not in live]:
            del self._seen[key]


class _Collector:
    """A custom collector: ``describe`` yields the empty families, ``collect`` fills them."""

    specs: dict[str, MetricSpec] = {}

    def describe(self) -> Iterable[Metric]:
        return [s.family() for s in self.specs.values()]

    def collect(self) -> Iterable[Metric]:  # pragma: no cover - overridden
        return []


# ------------------------------------------------------------------ executions


class _Series:
    """One (function, runtime, status): its count and its (function, runtime) latency slots."""

    __slots__ = ("n", "bins", "sums")

    def __init__(self, bins: list[int], sums: list[float]) -> None:
        self.n = 0
        self.bins = bins  # non-cumulative, _NB slots per stage, shared by statuses
        self.sums = sums


class _Executions(_Collector):
    """Execution counts and latency histograms, recorded without locks."""

    def __init__(self, role: str, stages: tuple[str, ...], max_functions: int) -> None:
        self.specs = _EXEC[role]
        self.role = role
        self.stages = stages
        self.max_functions = max_functions
        self.series: dict[tuple[str, str, str], _Series] = {}  # raw key -> slots (hot path)
        self.labelled: dict[tuple[str, str, str], _Series] = {}  # label values -> slots
        self.latency: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.rejected: dict[str, int] = {}
        self._functions: set[str] = set()

    def hit(self, function: str, runtime: str, status: str, error_code: str) -> _Series:
        """Count one finished execution; its series' slots, for the caller's latencies."""
        s = self.series.get((function, runtime, status))
        if s is None:
            s = self.add(function, runtime, status)
        s.n += 1
        if error_code:
            k = (function, error_code)
            self.errors[k] = self.errors.get(k, 0) + 1
        return s

    def add(self, function: str, runtime: str, status: str) -> _Series:
        """Slots for a new raw (function, runtime, status); the only allocating path.

        Raw keys are what the hot path looks up; several may share one labelled
        series (functions past ``max_functions`` become ``_other``, runtime "" is
        ``unknown``).
        """
        flabel = function
        if function not in self._functions:
            if len(self._functions) >= self.max_functions:
                flabel = OTHER
            else:
                self._functions.add(function)
        rlabel = runtime or "unknown"
        s = self.labelled.get((flabel, rlabel, status))
        if s is None:
            lat = self.latency.get((flabel, rlabel))
            if lat is None:
                lat = ([0] * (_NB * len(self.stages)), [0.0] * len(self.stages))
                self.latency[(flabel, rlabel)] = lat
            s = _Series(*lat)
            self.labelled[(flabel, rlabel, status)] = s
        self.series[(function, runtime, status)] = s
        return s

    def collect(self) -> Iterable[Metric]:
        p = f"spear_{self.role}_"
        fams = {name: spec.family() for name, spec in self.specs.items()}
        for labels, s in _snapshot(lambda: list(self.labelled.items()), []):
            fams[p + "executions_total"].add_metric(labels, s.n)
        errs: dict[tuple[str, str], int] = {}
        for (function, code), n in _snapshot(lambda: list(self.errors.items()), []):
            key = (function if function in self._functions else OTHER, code)
            errs[key] = errs.get(key, 0) + n
        for labels, n in errs.items():
            fams[p + "execution_errors_total"].add_metric(labels, n)
        for code, n in _snapshot(lambda: list(self.rejected.items()), []):
            fams[p + "rejected_total"].add_metric((code,), n)
        for labels, (bins, sums) in _snapshot(lambda: list(self.latency.items()), []):
            bins = list(bins)
            for i, stage in enumerate(self.stages):
                acc, buckets = 0, []
                for le, c in zip(_LE, bins[i * _NB:(i + 1) * _NB]):
                    acc += c
                    buckets.append((le, acc))
                fams[f"{p}execution_{stage}_seconds"].add_metric(labels, buckets, sums[i])
        return fams.values()


_bisect = bisect.bisect_left


class _DaemonMetrics:
    """What the SMS and the Spearlet share: registry, build info, mesh counters, HTTP."""

    role = ""
    STAGES: tuple[str, ...] = ()

    def __init__(self, registry: CollectorRegistry | None = None, *, max_functions: int = 500,
                 process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        Info("spear_build", _COMMON["spear_build_info"].help, registry=self.registry).info(
            {"version": __version__, "role": self.role})
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self._exec = _Executions(self.role, self.STAGES, max_functions)
        self.registry.register(self._exec)
        self._server: MetricsServer | None = None

    def rejected(self, code: str) -> None:
        """An invocation was refused before it became an execution (``code``: wire error code)."""
        r = self._exec.rejected
        r[code] = r.get(code, 0) + 1

    def watch_mesh(self, sockets: Mapping[str, Any]) -> None:
        """Expose message counters of ``{"name": RouterServer | DealerPeer | Endpoint}``."""
        self.registry.register(MeshCollector(sockets))

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> "MetricsServer":
        """Serve ``/metrics`` from a daemon thread; ``port=0`` picks a free port."""
        self._server = MetricsServer(self.registry, host, port)
        return self._server

    @property
    def server(self) -> "MetricsServer | None":
        return self._server

    def close(self) -> None:
        """Stop the HTTP server (blocks up to ~0.5 s: from a coroutine use ``asyncio.to_thread``)."""
        if self._server is not None:
            self._server.close()
            self._server = None


class SpearletMetrics(_DaemonMetrics):
    """Metrics of one Spearlet: call :meth:`execution_finished` where executions end."""

    role = "spearlet"
    STAGES = ("queue", "cold_start", "run", "end_to_end")

    def execution_finished(self, function: str, runtime: str, status: str, queue_s: float,
                           cold_s: float, run_s: float, total_s: float, error_code: str = "") -> None:
        """Record one finished execution (the hot path: about a microsecond)."""
        s = self._exec.hit(function, runtime, status, error_code)
        b = s.bins
        m = s.sums
        b[_bisect(BUCKETS, queue_s)] += 1
        m[0] += queue_s
        if cold_s > 0.0:
            b[_NB + _bisect(BUCKETS, cold_s)] += 1
            m[1] += cold_s
        b[2 * _NB + _bisect(BUCKETS, run_s)] += 1
        m[2] += run_s
        b[3 * _NB + _bisect(BUCKETS, total_s)] += 1
        m[3] += total_s

    def watch(self, functions: Any, monitor: Any = None, *, usage: Callable[[], Any] | None = None,
              registered: Callable[[], bool] | None = None,
              reconnects: Callable[[], int] | None = None) -> None:
        """Read pools, running executions and node figures at scrape time.

        ``functions``: the FunctionService (``deployments``, ``running``,
        ``max_concurrency``, ``draining``). ``monitor``: the ResourceMonitor
        (``capacity()``; ``usage()`` unless ``usage`` is given).
        """
        self.registry.register(SpearletCollector(functions, monitor, usage=usage,
                                                 registered=registered, reconnects=reconnects))


class SMSMetrics(_DaemonMetrics):
    """Metrics of the SMS: call :meth:`execution_finished` when an execution ends."""

    role = "sms"
    STAGES = ("queue", "end_to_end")

    def __init__(self, registry: CollectorRegistry | None = None, **kw: Any) -> None:
        super().__init__(registry, **kw)
        self.refusals: dict[str, int] = {}
        self.transitions: dict[str, int] = {}
        self.loop_stalls = 0
        self.loop_stalled_seconds = 0.0

    def stalled(self, seconds: float) -> None:
        """The SMS's own loop did not run for ``seconds`` (paused, GC, swap)."""
        self.loop_stalls += 1
        self.loop_stalled_seconds += seconds

    def execution_finished(self, function: str, runtime: str, status: str, total_s: float,
                           queue_s: float, error_code: str = "") -> None:
        """Record one finished execution (the hot path)."""
        s = self._exec.hit(function, runtime, status, error_code)
        b = s.bins
        m = s.sums
        b[_bisect(BUCKETS, queue_s)] += 1
        m[0] += queue_s
        b[_NB + _bisect(BUCKETS, total_s)] += 1
        m[1] += total_s

    def record(self, info: Any, runtime: str, dispatched_at: float = 0.0) -> None:
        """:meth:`execution_finished` from a terminal ``ExecutionInfo`` (SMS clock times)."""
        total = max(0.0, info.finished_at - info.submitted_at)
        queue = max(0.0, dispatched_at - info.submitted_at) if dispatched_at else total
        self.execution_finished(info.function, runtime, info.status, total, queue,
                                info.error.code if info.error is not None else "")

    def execution_ended(self, tasks: Any, execution_id: str) -> None:
        """Record an execution the SMS core just ended (``tasks``: its executions)."""
        ex = tasks.execs.get(execution_id)
        if ex is None:
            return
        fn = tasks.functions.get(ex.info.function)
        self.record(ex.info, fn.spec.runtime if fn is not None else "", ex.dispatched_at)

    def dispatch_refused(self, code: str) -> None:
        """A node refused a Dispatch (the SMS spills it elsewhere)."""
        self.refusals[code] = self.refusals.get(code, 0) + 1

    def node_event(self, state: str) -> None:
        """A node entered ``state`` (ready, unhealthy, draining, gone)."""
        self.transitions[state] = self.transitions.get(state, 0) + 1

    def watch(self, tasks: Any, nodes: Any, table: Any = None, store: Any = None) -> None:
        """Read queue, executions, nodes and the store's health at scrape time
        (the SMS core's executions, node registry and node table; a GuardedStore)."""
        self.registry.register(SMSCollector(self, tasks, nodes, table, store))


# ------------------------------------------------------------------ state collectors


class MeshCollector(_Collector):
    """Message counters of named sockets, read at scrape time."""

    specs = _MESH

    def __init__(self, sockets: Mapping[str, Any]) -> None:
        self.sockets = dict(sockets)
        self._mono = _Monotonic()
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        fams = {name: spec.family() for name, spec in self.specs.items()}
        with self._lock:  # scrapes may run in parallel threads; _Monotonic is stateful
            for name, obj in self.sockets.items():
                ep = getattr(obj, "endpoint", obj)  # RouterServer/DealerPeer wrap an Endpoint
                for metric, src, attr in (
                    ("messages_received", ep, "received"), ("messages_sent", ep, "sent"),
                    ("messages_dropped", ep, "dropped"), ("handler_errors", ep, "handler_errors"),
                    ("protocol_errors", obj, "protocol_errors"), ("denied", obj, "denied"),
                ):
                    value = getattr(src, attr, None)
                    if value is not None:
                        value = self._mono((name, metric), src, value)
                        fams[f"spear_mesh_{metric}_total"].add_metric((name,), value)
        return fams.values()


class SpearletCollector(_Collector):
    """Pools, running executions, link state and node figures of a Spearlet."""

    specs = _SPEARLET_STATE

    def __init__(self, functions: Any, monitor: Any = None, *, usage=None, registered=None,
                 reconnects=None) -> None:
        self.functions = functions
        self.monitor = monitor
        self.usage = usage or (monitor.usage if monitor is not None else None)
        self.registered = registered
        self.reconnects = reconnects
        self._mono = _Monotonic()
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        f = {name: spec.family() for name, spec in self.specs.items()}
        fn = self.functions

        def g(name: str, value: float, labels: tuple = ()) -> None:
            f[name].add_metric(labels, value)

        g("spear_spearlet_running_executions", fn.running)
        g("spear_spearlet_max_concurrency", fn.max_concurrency)
        g("spear_spearlet_draining", 1 if fn.draining else 0)
        if self.registered is not None:
            g("spear_spearlet_sms_registered", 1 if self.registered() else 0)
        if self.reconnects is not None:
            g("spear_spearlet_sms_reconnects_total", self.reconnects())
        deployments = _snapshot(lambda: list(fn.deployments.items()), [])
        g("spear_spearlet_deployed_functions", len(deployments))
        with self._lock:
            for name, d in deployments:
                pool = d.pool
                slots = pool.slots
                lab = (name,)
                for metric, value in (("hits", slots.hits), ("misses", slots.misses),
                                      ("evictions", slots.evictions),
                                      ("cold_starts", pool.cold_starts)):
                    g(f"spear_spearlet_pool_{metric}_total", self._mono((name, metric), pool, value), lab)
                g("spear_spearlet_pool_instances", slots.idle, (name, "idle"))
                g("spear_spearlet_pool_instances", slots.busy, (name, "busy"))
                g("spear_spearlet_pool_max_instances", slots.capacity, lab)
                waiting = getattr(pool, "waiting", None)
                if waiting is None:  # until InstancePool grows a public ``waiting``
                    waiting = len(getattr(pool, "_waiters", ()))
                g("spear_spearlet_pool_waiting", waiting, lab)
            self._mono.keep_only((n, m) for n, _ in deployments
                                 for m in ("hits", "misses", "evictions", "cold_starts"))
        if self.monitor is not None:
            cap = self.monitor.capacity()
            g("spear_node_capacity_cores", cap.cores)
            g("spear_node_capacity_memory_bytes", cap.memory)
            g("spear_node_capacity_disk_bytes", cap.disk)
            g("spear_node_capacity_slots", cap.slots)
        if self.usage is not None:
            u = self.usage()
            g("spear_node_cpu_percent", u.cpu_percent)
            g("spear_node_memory_used_bytes", u.memory_used)
            g("spear_node_disk_used_bytes", u.disk_used)
            g("spear_node_load1", u.load1)
            g("spear_node_network_receive_bytes_total", u.net_rx)
            g("spear_node_network_transmit_bytes_total", u.net_tx)
        return f.values()


_NODE_STATES = ("ready", "unhealthy", "draining")


class SMSCollector(_Collector):
    """Queue, executions, nodes and cluster totals of the SMS, plus its event counters."""

    specs = _SMS_STATE

    def __init__(self, owner: SMSMetrics, tasks: Any, nodes: Any, table: Any = None,
                 store: Any = None) -> None:
        self.owner = owner
        self.tasks = tasks
        self.nodes = nodes
        self.table = table
        self.store = store

    def collect(self) -> Iterable[Metric]:
        f = {name: spec.family() for name, spec in self.specs.items()}

        def g(name: str, value: float, labels: tuple = ()) -> None:
            f[name].add_metric(labels, value)

        t = self.tasks
        g("spear_sms_queue_depth", t.queued)
        g("spear_sms_executions_active", _snapshot(t.active, 0))
        g("spear_sms_functions", len(t.functions))
        g("spear_sms_loop_stalls_total", getattr(self.owner, "loop_stalls", 0))
        g("spear_sms_loop_stalled_seconds_total", getattr(self.owner, "loop_stalled_seconds", 0.0))
        store = self.store
        g("spear_sms_store_healthy", 0 if getattr(store, "error", "") else 1)
        g("spear_sms_store_write_errors_total", getattr(store, "write_errors", 0))
        counts = t.counts
        g("spear_sms_submitted_total", counts.get("submitted", 0))
        g("spear_sms_retries_total", counts.get("retried", 0))
        g("spear_sms_late_results_total", counts.get("late_results", 0))
        g("spear_sms_forged_reports_total", counts.get("forged_reports", 0))
        for code, n in _snapshot(lambda: list(self.owner.refusals.items()), []):
            g("spear_sms_dispatch_refusals_total", n, (code,))
        for state, n in _snapshot(lambda: list(self.owner.transitions.items()), []):
            g("spear_sms_node_transitions_total", n, (state,))
        nodes = _snapshot(lambda: list(self.nodes.nodes.values()), [])
        by_state = dict.fromkeys(_NODE_STATES, 0)
        cores = memory = running = 0
        for n in nodes:
            by_state[n.state] = by_state.get(n.state, 0) + 1
            g("spear_sms_node_up", 1 if n.state == "ready" else 0, (n.node_id, n.name))
            if n.state == "ready":
                cores += n.capacity.cores
                memory += n.capacity.memory
                running += n.usage.running
        for state, n in by_state.items():
            g("spear_sms_nodes", n, (state,))
        g("spear_sms_cluster_capacity_cores", cores)
        g("spear_sms_cluster_capacity_memory_bytes", memory)
        g("spear_sms_cluster_running", running)
        if self.table is not None:
            cpu, mem = _snapshot(self.table.total_reserved, (0.0, 0.0))
            g("spear_sms_cluster_reserved_cores", cpu)
            g("spear_sms_cluster_reserved_memory_bytes", mem)
        return f.values()


# ------------------------------------------------------------------ HTTP


class MetricsServer:
    """``/metrics`` over HTTP from a daemon thread (prometheus-client's WSGI server)."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> None:
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise errors.ConfigError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        self.host = host
        self.port: int = self._httpd.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port (blocks until the thread notices, <= 0.5 s)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=2.0)
