"""Prometheus metrics of one node, in a registry of its own.

Hot-path counters (envelopes opened per second by the thousands) stay plain ints in
the layer that counts them; a collector reads them at scrape time, so counting costs
nothing on the hot path.

The registry, and prometheus_client with it (≈1.7 MiB resident with its http.server and
wsgiref), is built at the first scrape or tool call: an idle node nobody scrapes does
not carry it. Until then registrations are kept as closures and replayed in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Registration = Callable[["CollectorRegistry"], object]


class NodeMetrics:
    """The registry behind `/metrics`, with process metrics and node gauges."""

    def __init__(self) -> None:
        self._registry: CollectorRegistry | None = None
        self._registrations: list[Registration] = []
        self._up = 0.0
        self._start_time = 0.0

    @property
    def registry(self) -> CollectorRegistry:
        return self.build()

    def build(self) -> CollectorRegistry:
        """The registry, built (with everything registered so far) at the first call."""
        if self._registry is None:
            from prometheus_client import (
                CollectorRegistry,
                Gauge,
                PlatformCollector,
                ProcessCollector,
                disable_created_metrics,
            )

            # No `<name>_created` series (each histogram's creation time, a family of its
            # own that nothing reads; the node's start time is vsmcp_start_time_seconds).
            disable_created_metrics()  # type: ignore[no-untyped-call]
            registry = CollectorRegistry(auto_describe=True)
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            Gauge("vsmcp_up", "1 while the node serves", registry=registry).set_function(
                lambda: self._up
            )
            Gauge(
                "vsmcp_start_time_seconds", "Unix time the node started", registry=registry
            ).set_function(lambda: self._start_time)
            self._registry = registry
            for register in self._registrations:
                register(registry)
            self._registrations.clear()
        return self._registry

    def on_registry(self, register: Registration) -> None:
        """Call `register(registry)` once the registry exists (now, if it does)."""
        if self._registry is None:
            self._registrations.append(register)
        else:
            register(self._registry)

    def set_up(self, up: bool, *, start_time: float | None = None) -> None:
        """vsmcp_up (and, when given, vsmcp_start_time_seconds)."""
        self._up = 1.0 if up else 0.0
        if start_time is not None:
            self._start_time = start_time

    def add_counters(
        self,
        name: str,
        documentation: str,
        label: str,
        read: Callable[[], Mapping[str, float]],
        known: Iterable[str] = (),
    ) -> None:
        self._add_family(name, documentation, label, read, known, gauge=False)

    def add_gauges(
        self,
        name: str,
        documentation: str,
        label: str,
        read: Callable[[], Mapping[str, float]],
        known: Iterable[str] = (),
    ) -> None:
        self._add_family(name, documentation, label, read, known, gauge=True)

    def _add_family(
        self,
        name: str,
        documentation: str,
        label: str,
        read: Callable[[], Mapping[str, float]],
        known: Iterable[str],
        *,
        gauge: bool,
    ) -> None:
        known = tuple(known)

        def register(registry: CollectorRegistry) -> None:
            from vsmcp.node.metrics_collectors import CountersCollector

            registry.register(
                CountersCollector(name, documentation, label, read, known, gauge=gauge)
            )

        self.on_registry(register)

    def add_gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge without labels, read at scrape time."""

        def register(registry: CollectorRegistry) -> None:
            from prometheus_client import Gauge

            Gauge(name, documentation, registry=registry).set_function(read)

        self.on_registry(register)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
