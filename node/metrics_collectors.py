"""Prometheus collectors for counts kept elsewhere (imported with prometheus_client, at
the first scrape or tool call: `vsmcp.node.metrics` defers both)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


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
