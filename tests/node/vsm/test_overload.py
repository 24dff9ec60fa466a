"""System 3's overload watch: shed counts per window, loop lag, pain when sustained."""

from __future__ import annotations

from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.vsm.concurrency import AdaptiveLimiter, LimiterSettings
from vsmcp.node.vsm.overload import MAX_PAIN, PAIN_SOURCE, OverloadWatch


def watch(
    limiter: AdaptiveLimiter, pains: list[tuple[str, float, str]], pain_after_s: float = 3.0
) -> OverloadWatch:
    return OverloadWatch(
        lambda: [limiter],
        lambda *signal: pains.append(signal),
        LoopSupervisor(),
        pain_after_s=pain_after_s,
    )


def offer(limiter: AdaptiveLimiter, calls: int) -> None:
    """`calls` calls arrive while the limit is full: what does not fit is refused."""
    for _ in range(calls):
        if limiter.try_acquire("normal"):
            limiter.release(None, 0.0)
            limiter.try_acquire("normal")  # held: the entry stays full


def test_sustained_shedding_raises_pain_once_per_period() -> None:
    limiter = AdaptiveLimiter("mcp", LimiterSettings(min_limit=1, initial_limit=1, max_limit=1))
    pains: list[tuple[str, float, str]] = []
    w = watch(limiter, pains)
    for _ in range(2):
        offer(limiter, 10)
        w.tick(0.0)
    assert pains == []  # two seconds of shedding: not sustained yet
    offer(limiter, 10)
    w.tick(0.0)
    assert len(pains) == 1
    source, intensity, reason = pains[0]
    assert source == PAIN_SOURCE and 0 < intensity <= MAX_PAIN
    assert "refused" in reason
    for _ in range(2):
        offer(limiter, 10)
        w.tick(0.0)
    assert len(pains) == 1  # at most once per pain_after_s
    offer(limiter, 10)
    w.tick(0.0)
    assert len(pains) == 2
    view = w.view()
    assert view["shed"] == limiter.refused_total() and view["shedding_for_s"] == 6.0


def test_a_quiet_second_ends_the_streak() -> None:
    limiter = AdaptiveLimiter("mcp", LimiterSettings(min_limit=1, initial_limit=1, max_limit=1))
    pains: list[tuple[str, float, str]] = []
    w = watch(limiter, pains)
    for second in range(10):
        if second % 3 != 2:
            offer(limiter, 5)
        w.tick(0.0)
    assert pains == []


def test_pain_off_and_loop_lag_percentiles() -> None:
    limiter = AdaptiveLimiter("mcp", LimiterSettings(min_limit=1, initial_limit=1, max_limit=1))
    pains: list[tuple[str, float, str]] = []
    w = watch(limiter, pains, pain_after_s=0.0)
    for i in range(100):
        offer(limiter, 5)
        w.tick(0.001 if i % 50 else 0.2)
    assert pains == []
    assert w.loop_lag_s(50) == 0.001
    assert w.loop_lag_s(99) == 0.2  # one late wake-up in the last 60 ticks
    assert w.view()["loop_lag_ms"] == {"p50": 1.0, "p99": 200.0}
