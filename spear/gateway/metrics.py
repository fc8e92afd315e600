"""Prometheus figures of the gateway itself, served on its own ``/metrics``.

Requests by route template (bounded cardinality), method and status; request
latency; open event streams. A private registry, as every Spear daemon has.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

BUCKETS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("spear_gateway_requests", "HTTP requests answered",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("spear_gateway_request_seconds",
                                 "time to the response's headers (streams: to their start)",
                                 ["route"], buckets=BUCKETS, registry=self.registry)
        self.streams = Gauge("spear_gateway_streams", "open Server-Sent Event streams",
                             registry=self.registry)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
