"""One registry per daemon: build info, execution figures, mesh counters, ``/metrics``.

Execution counts and latency histograms are recorded by one call per finished
execution into plain ints in per-series slots (``bisect`` picks the bucket);
no lock, no labelled child lookup. The collector turns the slots into
counter and histogram families at scrape time.
"""

from __future__ import annotations

import bisect
import threading
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .. import __version__, errors
from .exposition import _COMMON, _EXEC, _NB, OTHER, _Collector, _snapshot, bucket_labels
from .mesh import MeshCollector

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric


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
        le = bucket_labels()
        for labels, (bins, sums) in _snapshot(lambda: list(self.latency.items()), []):
            bins = list(bins)
            for i, stage in enumerate(self.stages):
                acc, buckets = 0, []
                for bound, c in zip(le, bins[i * _NB:(i + 1) * _NB]):
                    acc += c
                    buckets.append((bound, acc))
                fams[f"{p}execution_{stage}_seconds"].add_metric(labels, buckets, sums[i])
        return fams.values()


_bisect = bisect.bisect_left


class _DaemonMetrics:
    """What the SMS and the Spearlet share: registry, build info, mesh counters, HTTP.

    The registry (and prometheus-client, ~50 ms of imports) is made when first
    asked for: by ``/metrics`` being served or by a reader. Until then the
    collectors wait in a list; the hot path never needs it.
    """

    role = ""
    STAGES: tuple[str, ...] = ()

    def __init__(self, registry: CollectorRegistry | None = None, *, max_functions: int = 500,
                 process: bool = True) -> None:
        self._registry = registry
        self._process = process
        #: the registry is made once, whichever thread asks first (the loop, a reader)
        self._making = threading.Lock()
        self._exec = _Executions(self.role, self.STAGES, max_functions)
        self._collectors: list[Any] = [self._exec]
        self._server: MetricsServer | None = None
        if registry is not None:
            self._fill(registry)

    @property
    def registry(self) -> CollectorRegistry:
        """This daemon's registry, made (with its collectors) on first use."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            with self._making:
                if self._registry is None:
                    self._fill(CollectorRegistry())
        return self._registry

    def _fill(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Info, PlatformCollector, ProcessCollector

        Info("spear_build", _COMMON["spear_build_info"].help, registry=registry).info(
            {"version": __version__, "role": self.role})
        if self._process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        for c in self._collectors:
            registry.register(c)
        self._registry = registry  # last: a reader never gets it half filled

    def register(self, collector: Any) -> None:
        """Add a collector: now if the registry exists, else when it is made."""
        with self._making:  # registered by _fill or here, never both nor neither
            self._collectors.append(collector)
            if self._registry is not None:
                self._registry.register(collector)

    def rejected(self, code: str) -> None:
        """An invocation was refused before it became an execution (``code``: wire error code)."""
        r = self._exec.rejected
        r[code] = r.get(code, 0) + 1

    def watch_mesh(self, sockets: Mapping[str, Any]) -> None:
        """Expose message counters of ``{"name": RouterServer | DealerPeer | Endpoint}``."""
        self.register(MeshCollector(sockets))

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


class MetricsServer:
    """``/metrics`` over HTTP from a daemon thread (prometheus-client's WSGI server)."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> None:
        from prometheus_client.exposition import start_http_server

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
