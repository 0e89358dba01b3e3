"""A tiny Prometheus text-format registry (counters, gauges, histograms) for the proxy's /metrics.

Metric names follow kube-proxy's (`kubeproxy_sync_proxy_rules_duration_seconds`,
`kubeproxy_network_programming_duration_seconds`, ...) so existing dashboards and
alerts work unchanged.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

Labels = tuple[tuple[str, str], ...]

# kube-proxy's buckets: exponential from 1 ms, x2, 16 buckets (up to ~32 s).
SYNC_BUCKETS = tuple(0.001 * 2**i for i in range(16))
# Network programming latency: 0.25 s .. 5 min, kube-proxy's custom buckets, trimmed.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20, 25, 30,
                   45, 60, 120, 180, 240, 300)


def _fmt_labels(labels: Labels, extra: Iterable[tuple[str, str]] = ()) -> str:
    items = [*labels, *extra]
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in items) + "}"


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self._lock = threading.Lock()

    def lines(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            return [f"{self.name}{_fmt_labels(k)} {_fmt(v)}" for k, v in sorted(self._values.items())]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[Labels, tuple[list[int], list[float]]] = {}  # counts per bucket, [sum, count]

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            counts, totals = self._series.setdefault(key, ([0] * len(self.buckets), [0.0, 0.0]))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
            totals[0] += value
            totals[1] += 1

    def count(self, **labels: str) -> int:
        series = self._series.get(tuple(sorted(labels.items())))
        return int(series[1][1]) if series else 0

    def lines(self) -> list[str]:
        out: list[str] = []
        with self._lock:
            for key, (counts, totals) in sorted(self._series.items()):
                for bound, n in zip(self.buckets, counts, strict=True):
                    out.append(f"{self.name}_bucket{_fmt_labels(key, [('le', _fmt(bound))])} {n}")
                out.append(f"{self.name}_bucket{_fmt_labels(key, [('le', '+Inf')])} {int(totals[1])}")
                out.append(f"{self.name}_sum{_fmt_labels(key)} {_fmt(totals[0])}")
                out.append(f"{self.name}_count{_fmt_labels(key)} {int(totals[1])}")
        return out


class Registry:
    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        out: list[str] = []
        for m in self._metrics:
            out.append(f"# HELP {m.name} {m.help}")
            out.append(f"# TYPE {m.name} {m.kind}")
            out.extend(m.lines())
        return "\n".join(out) + "\n"


class ProxyMetrics:
    """The proxy's metrics, created together so a daemon has one object to pass around."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.sync_duration = Histogram("kubeproxy_sync_proxy_rules_duration_seconds",
                                       "SyncProxyRules latency in seconds", SYNC_BUCKETS)
        self.full_sync_duration = Histogram("kubeproxy_sync_full_proxy_rules_duration_seconds",
                                            "SyncProxyRules latency in seconds for full resyncs", SYNC_BUCKETS)
        self.partial_sync_duration = Histogram("kubeproxy_sync_partial_proxy_rules_duration_seconds",
                                               "SyncProxyRules latency in seconds for partial resyncs", SYNC_BUCKETS)
        self.programming_latency = Histogram("kubeproxy_network_programming_duration_seconds",
                                             "In Cluster Network Programming Latency in seconds", LATENCY_BUCKETS)
        self.last_sync = Gauge("kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                               "The last time proxy rules were successfully synced")
        self.last_queued = Gauge("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                                 "The last time a sync of proxy rules was queued")
        self.rules = Gauge("kubeproxy_sync_proxy_rules_total",
                           "Number of proxy rules (and map elements) programmed, by mode and kind")
        self.sync_failures = Counter("kubeproxy_sync_proxy_rules_failures_total",
                                     "Syncs whose apply to the kernel failed")
        self.endpoint_changes = Counter("kubeproxy_sync_proxy_rules_endpoint_changes_total",
                                        "Cumulative proxy rules EndpointSlice changes")
        self.service_changes = Counter("kubeproxy_sync_proxy_rules_service_changes_total",
                                       "Cumulative proxy rules Service changes")
        self.invalid_objects = Gauge("netplane_proxy_invalid_objects",
                                     "Objects skipped because they cannot be programmed")
        self.conntrack_deletions = Counter("netplane_proxy_conntrack_entries_deleted_total",
                                           "Stale UDP conntrack entries deleted")
        for m in (self.sync_duration, self.full_sync_duration, self.partial_sync_duration,
                  self.programming_latency, self.last_sync, self.last_queued, self.rules, self.sync_failures,
                  self.endpoint_changes, self.service_changes, self.invalid_objects, self.conntrack_deletions):
            r.add(m)

    def render(self) -> str:
        return self.registry.render()
