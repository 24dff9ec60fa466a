"""System 3's overload watch: shed counts per window, loop lag, pain when sustained."""

from __future__ import annotations

from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.vsm.overload import MAX_PAIN, PAIN_SOURCE, OverloadWatch


class Calls:
    """The node's call counts as S3's KPIs keep them: refused for load, and the rest."""

    def __init__(self) -> None:
        self.refused = self.ran = 0

    def __call__(self) -> tuple[int, int]:
        return self.refused, self.ran


def watch(
    calls: Calls, pains: list[tuple[str, float, str]], pain_after_s: float = 3.0
) -> OverloadWatch:
    return OverloadWatch(
        list,
        lambda *signal: pains.append(signal),
        LoopSupervisor(),
        calls=calls,
        pain_after_s=pain_after_s,
    )


def offer(calls: Calls, count: int) -> None:
    """`count` calls arrive while the node is full: one runs, the rest are refused."""
    calls.ran += 1
    calls.refused += count - 1


def test_sustained_shedding_raises_pain_once_per_period() -> None:
    calls = Calls()
    pains: list[tuple[str, float, str]] = []
    w = watch(calls, pains)
    for _ in range(2):
        offer(calls, 10)
        w.tick(0.0)
    assert pains == []  # two seconds of shedding: not sustained yet
    offer(calls, 10)
    w.tick(0.0)
    assert len(pains) == 1
    source, intensity, reason = pains[0]
    assert source == PAIN_SOURCE and 0 < intensity <= MAX_PAIN
    assert "refused" in reason
    for _ in range(2):
        offer(calls, 10)
        w.tick(0.0)
    assert len(pains) == 1  # at most once per pain_after_s
    offer(calls, 10)
    w.tick(0.0)
    assert len(pains) == 2
    view = w.view()
    assert view["shed"] == calls.refused and view["admitted"] == calls.ran
    assert view["shedding_for_s"] == 6.0


def test_a_quiet_second_ends_the_streak() -> None:
    calls = Calls()
    pains: list[tuple[str, float, str]] = []
    w = watch(calls, pains)
    for second in range(10):
        if second % 3 != 2:
            offer(calls, 5)
        w.tick(0.0)
    assert pains == []


def test_pain_off_and_loop_lag_percentiles() -> None:
    calls = Calls()
    pains: list[tuple[str, float, str]] = []
    w = watch(calls, pains, pain_after_s=0.0)
    for i in range(100):
        offer(calls, 5)
        w.tick(0.001 if i % 50 else 0.2)
    assert pains == []
    assert w.loop_lag_s(50) == 0.001
    assert w.loop_lag_s(99) == 0.2  # one late wake-up in the last 60 ticks
    assert w.view()["loop_lag_ms"] == {"p50": 1.0, "p99": 200.0}
