"""Tool calls by tool and outcome, with their duration, as a Prometheus histogram.

Fed by the node's `metrics` event subscriber from `ToolCallFinished` events, off the
call path. Tool names come from callers (an unknown tool is named by whoever asked), so
the label is bounded: calls to unknown tools share one label value, and past
`MAX_TOOLS` distinct names the rest share another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vsmcp.node.metrics import NodeMetrics
from vsmcp.node.vsm.events import ToolCallFinished

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Histogram

NAME = "vsmcp_tool_call_duration_seconds"
# From a local echo (well under 1 ms) to the longest tool timeouts.
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MAX_TOOLS = 500
UNKNOWN_TOOL = "(unknown)"
OTHER_TOOLS = "(other)"


class ToolCallMetrics:
    """The histogram lives in the node's registry, built at the first scrape or call."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self._metrics = metrics
        self._histogram: Histogram | None = None
        self._tools: set[str] = set()
        metrics.on_registry(self._create)

    def _create(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Histogram

        self._histogram = Histogram(
            NAME,
            "Duration of tool calls that ended on this node (as entry or provider), by tool "
            "and outcome (ok, error_result or the error's reason)",
            ["tool", "outcome"],
            buckets=BUCKETS_S,
            registry=registry,
        )

    def observe(self, event: ToolCallFinished) -> None:
        tool = self._label(event)
        if self._histogram is None:
            self._metrics.build()  # which calls _create
        assert self._histogram is not None
        self._histogram.labels(tool, event.outcome).observe(event.latency_ms / 1000)

    def _label(self, event: ToolCallFinished) -> str:
        if event.outcome == "unknown_tool":
            return UNKNOWN_TOOL
        if event.tool in self._tools:
            return event.tool
        if len(self._tools) >= MAX_TOOLS:
            return OTHER_TOOLS
        self._tools.add(event.tool)
        return event.tool


REFUSAL_NAME = "vsmcp_mcp_refusal_seconds"
# Fine enough to read a 2 ms p99 target off the histogram (the call histogram's first
# buckets are 1 and 2.5 ms).
REFUSAL_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.01,
    0.025,
    0.1,
)


class RefusalTimes:
    """How long `/mcp` took to refuse a call for load (HTTP 503: `overloaded`, a shed
    class, a unit restarting): from the handler's start to the answer handed to the
    HTTP server, which excludes only the time the request waited for the event loop
    (`vsmcp_event_loop_lag_seconds`) and the write of the ≈300-byte answer."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self._metrics = metrics
        self._histogram: Histogram | None = None
        metrics.on_registry(self._create)

    def _create(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Histogram

        self._histogram = Histogram(
            REFUSAL_NAME,
            "Time /mcp took to refuse a call for load (HTTP 503), from the handler's start "
            "to the answer",
            buckets=REFUSAL_BUCKETS_S,
            registry=registry,
        )

    def observe(self, seconds: float) -> None:
        if self._histogram is None:
            self._metrics.build()  # which calls _create
        assert self._histogram is not None
        self._histogram.observe(seconds)
