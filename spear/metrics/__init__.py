"""Prometheus metrics of the SMS and the Spearlet.

This package holds the metric catalog, the collectors that read the daemons'
live objects at scrape time and the ``/metrics`` server; it may import only
prometheus-client, :mod:`spear.errors` and the version (the daemons hand it
their live objects to read), never a service.

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

Layout: :mod:`.exposition` (the catalog and collector helpers),
:mod:`.registry` (a daemon's registry, execution figures, ``/metrics``),
:mod:`.mesh` (socket counters), :mod:`.sms` and :mod:`.spearlet`. The
package imports only prometheus-client, :mod:`spear.errors` and the version;
the daemons hand it their live objects to read.

:data:`CATALOG` names every family, its type, help and labels; the collectors
build their families from it, and docs/tests check against it.

The scrape thread reads daemon state without the loop's cooperation. That is
safe under the GIL for what is read here (ints, ``len()``, ``list(dict)``);
a dict changing size mid-iteration is retried.
"""

from .exposition import BUCKETS, CATALOG, OTHER, MetricSpec, metric_names
from .mesh import MeshCollector
from .registry import MetricsServer
from .sms import SMSCollector, SMSMetrics
from .spearlet import SpearletCollector, SpearletMetrics

__all__ = [
    "BUCKETS", "CATALOG", "OTHER", "MeshCollector", "MetricSpec", "MetricsServer", "SMSCollector",
    "SMSMetrics", "SpearletCollector", "SpearletMetrics", "metric_names",
]
