"""Message counters of the mesh's sockets, read at scrape time."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

from .exposition import _MESH, _Collector, _Monotonic


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
