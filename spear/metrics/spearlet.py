"""The Spearlet's figures: executions by stage, pools, link state and node usage."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

from .exposition import _NB, _SPEARLET_STATE, BUCKETS, _Collector, _Monotonic, _snapshot
from .registry import _bisect, _DaemonMetrics


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
              reconnects: Callable[[], int] | None = None, results: Any = None) -> None:
        """Read pools, running executions and node figures at scrape time.

        ``functions``: the Spearlet's Runner (``deployments``, ``running``,
        ``max_concurrency``, ``draining``). ``monitor``: the ResourceMonitor
        (``capacity()``; ``usage()`` unless ``usage`` is given). ``results``:
        the buffer of unconfirmed results (``len()``, ``dropped``).
        """
        self.register(SpearletCollector(functions, monitor, usage=usage,
                                        registered=registered, reconnects=reconnects,
                                        results=results))


class SpearletCollector(_Collector):
    """Pools, running executions, link state and node figures of a Spearlet."""

    specs = _SPEARLET_STATE

    def __init__(self, functions: Any, monitor: Any = None, *, usage=None, registered=None,
                 reconnects=None, results=None) -> None:
        self.functions = functions
        self.results = results
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
        if self.results is not None:
            g("spear_spearlet_results_unconfirmed", len(self.results))
            g("spear_spearlet_results_dropped_total", self.results.dropped)
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
                g("spear_spearlet_pool_waiting", pool.waiting, lab)
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
