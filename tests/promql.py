"""Reading PromQL in deploy/ (alert rules, the Grafana dashboard) against what Spear exposes.

A plain module shared by tests/test_alerts.py and tests/test_dashboard.py: a
lexical reading of the expressions (enough for the ones we ship, checked by
its own test), the series names the daemons' registries can expose, and the
series names a live ``/metrics`` page declares.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

from spear.metrics import CATALOG, SMSMetrics, SpearletMetrics, metric_names

#: series Prometheus makes itself for every target
SYNTHETIC = {"up": ("job", "instance")}
#: labels every scraped series carries
TARGET_LABELS = {"job", "instance"}

_KEYWORDS = {
    # aggregations, functions and operators that look like identifiers
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "rate", "irate", "increase", "delta", "idelta", "deriv",
    "histogram_quantile", "abs", "absent", "absent_over_time", "avg_over_time", "max_over_time",
    "min_over_time", "sum_over_time", "count_over_time", "clamp_min", "clamp_max", "vector",
    "scalar", "time", "label_replace", "changes", "resets", "predict_linear", "and", "or",
    "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
}


class _Results(list):
    """An empty result buffer (``len()`` and ``dropped`` are what the collector reads)."""

    dropped = 0


def exposed() -> set[str]:
    """Every series name the SMS and Spearlet registries can expose."""
    sp = SpearletMetrics()
    sp.watch(SimpleNamespace(deployments={}, running=0, max_concurrency=1, draining=False),
             None, registered=lambda: True, reconnects=lambda: 0, results=_Results())
    sp.watch_mesh({})
    sms = SMSMetrics()
    sms.watch(SimpleNamespace(queued=0, active=lambda: 0, functions={}, counts={}),
              SimpleNamespace(nodes={}), SimpleNamespace(total_reserved=lambda: (0.0, 0.0)))
    return metric_names(sp.registry) | metric_names(sms.registry) | set(SYNTHETIC)


def labels_of(series: str) -> set[str]:
    """The labels a series of Spear's (or ``up``) carries besides the target's."""
    if series in SYNTHETIC:
        return set(SYNTHETIC[series])
    for suffix in ("", "_bucket", "_sum", "_count"):
        base = series[: len(series) - len(suffix)] if suffix else series
        if series.endswith(suffix) and base in CATALOG:
            return set(CATALOG[base].labels) | ({"le"} if suffix == "_bucket" else set())
    return set()


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def parse_expr(expr: str) -> tuple[set[str], list[tuple[str, set[str]]], set[str]]:
    """(metric names, [(metric, matcher labels)], grouping labels) of a PromQL expression.

    A lexical reading, enough for the expressions in the rules file.
    """
    selectors = [(m.group(1) or "", {part.split("=")[0].strip().rstrip("!~")
                                     for part in _STRING.sub('""', m.group(2)).split(",")
                                     if part.strip()})
                 for m in _SELECTOR.finditer(expr)]
    grouping = {lab.strip() for m in _GROUPING.finditer(expr)
                for lab in m.group(2).split(",") if lab.strip()}
    text = _STRING.sub(" ", expr)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range durations
    names = set()
    for m in _IDENT.finditer(text):
        word = m.group(0)
        following = text[m.end():].lstrip()[:1]
        if word in _KEYWORDS or following == "(" or re.fullmatch(r"\d.*", word):
            continue
        if re.fullmatch(r"(Inf|NaN|e\d*)", word):
            continue
        names.add(word)
    return names, selectors, grouping


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
             "summary": ("_sum", "_count"), "info": ("_info",)}


def scraped_names(text: str) -> set[str]:
    """Every series name a ``/metrics`` page declares, with or without samples yet.

    From its ``# TYPE`` lines (a family without samples has only those) and
    its sample lines.
    """
    out: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            base = name[:-len("_total")] if kind == "counter" and name.endswith("_total") else name
            for suffix in _SUFFIXES.get(kind, ("",)):
                out.add(base if base.endswith(suffix) else base + suffix)
        elif line and not line.startswith("#"):
            out.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return out
