from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from vsmcp.node import tool_call_metrics
from vsmcp.node.metrics import NodeMetrics
from vsmcp.node.tool_call_metrics import NAME, OTHER_TOOLS, UNKNOWN_TOOL, ToolCallMetrics
from vsmcp.node.vsm.events import ToolCallFinished


def _call(tool: str, outcome: str = "ok", latency_ms: float = 20.0) -> ToolCallFinished:
    return ToolCallFinished(
        ts=0.0,
        tool=tool,
        provider="n",
        origin="stdio",
        zone="public",
        latency_ms=latency_ms,
        outcome=outcome,
    )


def _sample(registry: CollectorRegistry, suffix: str, **labels: str) -> float | None:
    return registry.get_sample_value(NAME + suffix, labels)


def test_calls_are_counted_by_tool_and_outcome_in_seconds() -> None:
    node_metrics = NodeMetrics()
    metrics = ToolCallMetrics(node_metrics)
    registry = node_metrics.registry
    metrics.observe(_call("echo", latency_ms=20.0))
    metrics.observe(_call("echo", latency_ms=40.0))
    metrics.observe(_call("echo", "timeout", latency_ms=5000.0))
    assert _sample(registry, "_count", tool="echo", outcome="ok") == 2
    assert _sample(registry, "_sum", tool="echo", outcome="ok") == pytest.approx(0.06)
    assert _sample(registry, "_bucket", tool="echo", outcome="ok", le="0.025") == 1
    assert _sample(registry, "_count", tool="echo", outcome="timeout") == 1


def test_unknown_tools_share_one_label_value() -> None:
    node_metrics = NodeMetrics()
    metrics = ToolCallMetrics(node_metrics)
    registry = node_metrics.registry
    for i in range(3):
        metrics.observe(_call(f"made-up-{i}", "unknown_tool"))
    assert _sample(registry, "_count", tool=UNKNOWN_TOOL, outcome="unknown_tool") == 3
    assert _sample(registry, "_count", tool="made-up-0", outcome="unknown_tool") is None


def test_tool_names_past_the_cap_share_one_label_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tool_call_metrics, "MAX_TOOLS", 2)
    node_metrics = NodeMetrics()
    metrics = ToolCallMetrics(node_metrics)
    registry = node_metrics.registry
    for tool in ("a", "b", "c", "d", "a"):
        metrics.observe(_call(tool))
    assert _sample(registry, "_count", tool="a", outcome="ok") == 2
    assert _sample(registry, "_count", tool=OTHER_TOOLS, outcome="ok") == 2


def test_the_registry_is_built_at_first_use_with_what_was_registered_before_and_after() -> None:
    node_metrics = NodeMetrics()
    node_metrics.add_counters("vsmcp_early", "Registered before", "reason", lambda: {"a": 2})
    node_metrics.set_up(True, start_time=1234.0)
    ToolCallMetrics(node_metrics)
    text = node_metrics.render().decode()
    node_metrics.add_gauge("vsmcp_late", "Registered after", lambda: 7.0)
    later = node_metrics.render().decode()
    assert 'vsmcp_early_total{reason="a"} 2.0' in text
    assert "vsmcp_up 1.0" in text
    assert "vsmcp_start_time_seconds 1234.0" in text
    assert f"# TYPE {NAME} histogram" in text  # shown before any call
    assert "vsmcp_late" not in text
    assert "vsmcp_late 7.0" in later
