"""Tool calls by tool and outcome, with their duration, as a Prometheus histogram.

Fed by the node's `metrics` event subscriber from `ToolCallFinished` events, off the
call path. Tool names come from callers (an unknown tool is named by whoever asked), so
the label is bounded: calls to unknown tools share one label value, and past
`MAX_TOOLS` distinct names the rest share another.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from vsmcp.node.vsm.events import ToolCallFinished

NAME = "vsmcp_tool_call_duration_seconds"
# From a local echo (well under 1 ms) to the longest tool timeouts.
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MAX_TOOLS = 500
UNKNOWN_TOOL = "(unknown)"
OTHER_TOOLS = "(other)"


class ToolCallMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._histogram = Histogram(
            NAME,
            "Duration of tool calls that ended on this node (as entry or provider), by tool "
            "and outcome (ok, error_result or the error's reason)",
            ["tool", "outcome"],
            buckets=BUCKETS_S,
            registry=registry,
        )
        self._tools: set[str] = set()

    def observe(self, event: ToolCallFinished) -> None:
        tool = self._label(event)
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
