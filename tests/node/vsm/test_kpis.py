"""System 3's call KPIs over a window, fed by tool_call events."""

from __future__ import annotations

from vsmcp.node.vsm.events import Denial, ToolCallFinished
from vsmcp.node.vsm.kpis import CallKpis, percentile


def call(ts: float, latency_ms: float, outcome: str = "ok") -> ToolCallFinished:
    return ToolCallFinished(
        ts=ts,
        tool="t",
        provider="p",
        origin="o",
        zone="public",
        latency_ms=latency_ms,
        outcome=outcome,
    )


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 95) == 0.0


def test_errors_and_latency_over_the_window() -> None:
    kpis = CallKpis(window_s=10)
    deny = Denial(ts=1.0, origin="o", zone="public", limit="zone", blocked="t")
    kpis.on_events([call(1.0, 10), call(2.0, 20, "timeout"), deny, call(3.0, 30, "error_result")])
    assert kpis.error_ratio(3.0) == 2 / 3
    assert kpis.latency_ms(3.0, 95) == 30
    view = kpis.view(3.0)
    assert view["calls"] == 3 and view["errors"] == 2
    assert view["latency_ms"] == {"p50": 20, "p95": 30, "p99": 30}
    # At t=11.5 only the call at t=3 is still in (t − 10, t].
    assert kpis.error_ratio(11.5) == 1.0
    assert kpis.latency_ms(14.0, 50) is None
    assert kpis.view(14.0)["calls_total"] == 3


def test_the_callers_own_refusals_are_not_failures_of_the_node() -> None:
    kpis = CallKpis(window_s=10)
    caller = ["zone_denied", "invalid_arguments", "unknown_tool", "cancelled"]
    kpis.on_events([call(1.0, 1, outcome) for outcome in caller])
    assert kpis.error_ratio(1.0) == 0.0
    kpis.on_events([call(1.0, 1, outcome) for outcome in ("timeout", "unavailable")])
    assert kpis.error_ratio(1.0) == 2 / 6


def test_load_refusals_are_neither_failures_nor_calls() -> None:
    kpis = CallKpis(window_s=10)
    kpis.on_events([call(1.0, 500), call(1.5, 700, "timeout")])
    refusals = [call(2.0, 0.1, outcome) for outcome in ("overloaded", "shed", "rate_limited")]
    kpis.on_events(refusals * 10)
    # The one real failure of two calls, whatever the limits refused around them; the
    # refusals' fast answers do not hide the latency of the calls that ran.
    assert kpis.error_ratio(2.0) == 0.5
    assert kpis.latency_ms(2.0, 50) == 500
    view = kpis.view(2.0)
    assert (view["calls"], view["errors"], view["refused"]) == (2, 1, 30)
    assert view["refused_total"] == 30 and view["calls_total"] == 2
    # Refusals leave the window like calls do; the total stays.
    view = kpis.view(12.5)
    assert (view["calls"], view["refused"], view["refused_total"]) == (0, 0, 30)


def test_window_is_bounded() -> None:
    kpis = CallKpis(window_s=100, max_calls=2)
    for i in range(4):
        kpis.record(float(i), 1.0, False)
    assert kpis.view(4.0)["calls"] == 2 and kpis.evicted == 2


def test_running_counts_and_the_sorted_latencies_follow_evictions_and_expiry() -> None:
    # The window keeps its failed count and its sorted latencies between reads: both must
    # follow every change (a new call, one evicted by the bound, ones expired by time).
    kpis = CallKpis(window_s=10, max_calls=4)
    outcomes = ["timeout", "ok", "timeout", "ok", "ok", "timeout", "ok"]
    for i, outcome in enumerate(outcomes):
        kpis.on_events([call(float(i), float(10 - i), outcome)])
        kept = list(enumerate(outcomes))[max(0, i - 3) : i + 1]
        failed = sum(o == "timeout" for _, o in kept)
        assert kpis.error_ratio(float(i)) == failed / len(kept)
        assert kpis.latency_ms(float(i), 50) == percentile(sorted(10.0 - j for j, _ in kept), 50)
        assert kpis.view(float(i))["errors"] == failed
    # All expired: nothing left, nothing cached.
    assert kpis.error_ratio(100.0) == 0.0
    assert kpis.latency_ms(100.0, 95) is None
    kpis.on_events([call(101.0, 3.0, "timeout")])
    assert kpis.view(101.0)["latency_ms"] == {"p50": 3.0, "p95": 3.0, "p99": 3.0}
    assert kpis.error_ratio(101.0) == 1.0
