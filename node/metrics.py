"""Prometheus metrics of one node, in a registry of its own.

Hot-path counters (envelopes opened per second by the thousands) stay plain ints in
the layer that counts them; a collector reads them at scrape time, so counting costs
nothing on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class CountersCollector(Collector):
    """Exposes counts kept elsewhere as a labelled Prometheus counter (or gauge) family.

    `read()` returns {label value: count}; `known` label values are always shown,
    at zero until they happen, so dashboards and alerts see every reason up front.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        read: Callable[[], Mapping[str, float]],
        known: Iterable[str] = (),
        *,
        gauge: bool = False,
    ) -> None:
        self._gauge = gauge
        self._name = name
        self._documentation = documentation
        self._label = label
        self._read = read
        self._known = tuple(known)

    def collect(self) -> Iterable[Metric]:
        family_type = GaugeMetricFamily if self._gauge else CounterMetricFamily
        family = family_type(self._name, self._documentation, labels=[self._label])
        counts: dict[str, float] = dict.fromkeys(self._known, 0)
        counts.update(self._read())
        for value, count in sorted(counts.items()):
            family.add_metric([value], count)
        yield family


class NodeMetrics:
    """The registry behind `/metrics`, with process metrics and node gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.up = Gauge("vsmcp_up", "1 while the node serves", registry=self.registry)
        self.start_time = Gauge(
            "vsmcp_start_time_seconds", "Unix time the node started", registry=self.registry
        )

    def add_counters(
        self,
        name: str,
        documentation: str,
        label: str,
        read: Callable[[], Mapping[str, float]],
        known: Iterable[str] = (),
    ) -> None:
        self.registry.register(CountersCollector(name, documentation, label, read, known))

    def add_gauges(
        self,
        name: str,
        documentation: str,
        label: str,
        read: Callable[[], Mapping[str, float]],
        known: Iterable[str] = (),
    ) -> None:
        self.registry.register(
            CountersCollector(name, documentation, label, read, known, gauge=True)
        )

    def add_gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge without labels, read at scrape time."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)
