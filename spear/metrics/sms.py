"""The SMS's figures: executions, queue, nodes, cluster totals and event counters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

from .exposition import _NB, _SMS_STATE, BUCKETS, _Collector, _snapshot
from .registry import _bisect, _DaemonMetrics


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
        self.register(SMSCollector(self, tasks, nodes, table, store))


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
        settings, models = getattr(t, "s", None), getattr(t, "models", None)
        if settings is not None:
            g("spear_sms_placement_policy_info", 1, (settings.placement,))
        if models is not None:
            for reason in ("history", "unhealthy", "node_type", "function_node_type"):
                g("spear_sms_model_fallbacks_total", models.fallbacks.get(reason, 0), (reason,))
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
