"""What Spear exposes: the catalog of metric families, and the collector helpers.

:data:`CATALOG` names every family, its type, help and labels; the collectors
build their families from it, and docs/tests check against it. The helpers
here let a collector read daemon state from the scrape thread safely.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:  # prometheus-client is imported at the first scrape or serve, never at start
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

#: latency buckets (seconds), about 3x apart: inline wasm calls take tens of µs, docker
#: runs minutes. Few on purpose: every bucket is a line per function per stage, and
#: formatting lines is what a scrape spends its time on.
BUCKETS: tuple[float, ...] = (
    0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0,
)
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
        return _families()[self.kind](self.name, self.help, labels=self.labels)


@functools.cache
def _families() -> dict[str, type]:
    from prometheus_client.metrics_core import (CounterMetricFamily, GaugeMetricFamily,
                                                HistogramMetricFamily, InfoMetricFamily)

    return {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
            "histogram": HistogramMetricFamily, "info": InfoMetricFamily}


@functools.cache
def bucket_labels() -> list[str]:
    """The ``le`` label of each bucket, as prometheus-client writes it, and ``+Inf``."""
    from prometheus_client.utils import floatToGoString

    return [floatToGoString(b) for b in BUCKETS] + ["+Inf"]


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
    ("spear_sms_placement_policy_info", "gauge",
     "1, labelled with the placement policy in use ([sms] placement).", ("policy",)),
    ("spear_sms_model_fallbacks_total", "counter",
     "Placement decisions under a learned policy that used the request instead of a "
     "prediction, by reason (history: too few results yet; unhealthy: the model was wrong), "
     "and learned speed factors found wrong and set aside: a node type's, pooled over "
     "every function (node_type), or one function's on one node type (function_node_type).",
     ("reason",)),
)

_SPEARLET_STATE = _specs(
    ("spear_spearlet_running_executions", "gauge", "Executions running on this node (async path)."),
    ("spear_spearlet_max_concurrency", "gauge", "Executions this node accepts at once."),
    ("spear_spearlet_draining", "gauge", "1 while the node is stopping and refuses new work."),
    ("spear_spearlet_deployed_functions", "gauge", "Functions deployed on this node."),
    ("spear_spearlet_sms_registered", "gauge", "1 while this node is registered with the SMS."),
    ("spear_spearlet_sms_reconnects_total", "counter", "Times the link to the SMS was rebuilt."),
    ("spear_spearlet_results_unconfirmed", "gauge",
     "Results of SMS executions sent and not yet confirmed by the SMS."),
    ("spear_spearlet_results_dropped_total", "counter",
     "Unconfirmed results dropped because the buffer was full (bounds by count and bytes)."),
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
