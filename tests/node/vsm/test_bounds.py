"""System 3 moves the adaptive limits' upper bound from its KPIs (the event loop's lag),
damped: a step of load lowers it without swinging, it rises back once the load is
gone, never below the configured floor; each move is an `s3_bound` event."""

from __future__ import annotations

import itertools
import random

import pytest

from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.vsm.bounds import LOWERED, RAISED, BoundGovernor, BoundSettings
from vsmcp.node.vsm.concurrency import AdaptiveLimiter
from vsmcp.node.vsm.events import Event, LimitBoundChanged
from vsmcp.node.vsm.limiter_settings import LimiterSettings
from vsmcp.node.vsm.overload import OverloadWatch

MAX_LIMIT = 64
CAPACITY = 16  # calls the node's loop keeps up with


def loop_lag_s(limit: float, loaded: bool, rng: random.Random) -> float:
    """A node whose event loop falls behind by 10 ms per call in flight beyond what it
    keeps up with (under load every slot of the limit is taken), with ±20 % noise."""
    base = 0.01 + (0.01 * max(0.0, limit - CAPACITY) if loaded else 0.0)
    return base * rng.uniform(0.8, 1.2)


def reversals(values: list[float]) -> int:
    """How often the direction of change flips."""
    steps = [b - a for a, b in itertools.pairwise(values) if b != a]
    return sum(1 for a, b in itertools.pairwise(steps) if (a > 0) != (b > 0))


def test_a_step_load_lowers_the_bound_without_swinging_and_it_comes_back() -> None:
    governor = BoundGovernor(BoundSettings())
    rng = random.Random(11)
    shares: list[float] = []
    for second in range(400):
        loaded = 20 <= second < 200  # a step of load, then quiet
        limit = MAX_LIMIT * governor.share
        governor.tick(loop_lag_s(limit, loaded, rng), busy=loaded)
        shares.append(governor.share)
    during, after = shares[:200], shares[200:]
    assert min(during) < 1.0  # the load was seen
    assert reversals(during) == 0  # monotone down, then held: no swing
    settled = during[60:]
    assert max(settled) == min(settled)  # settled well within the step
    # Settled where the loop keeps up (lag within the dead band), not at the floor.
    assert MAX_LIMIT * settled[-1] > CAPACITY and settled[-1] > BoundSettings().min_share
    assert reversals(after) == 0 and after[-1] == 1.0  # back up, monotonically


def test_lag_flapping_around_the_thresholds_moves_nothing() -> None:
    governor = BoundGovernor(BoundSettings(breach_ticks=3, healthy_ticks=10))
    for second in range(300):
        governor.tick(0.4 if second % 3 != 2 else 0.01, busy=True)  # 2 high, 1 low
    assert governor.share == 1.0 and governor.changes == 0


def test_a_late_loop_without_calls_is_not_our_load() -> None:
    governor = BoundGovernor(BoundSettings())
    for _ in range(60):
        assert governor.tick(2.0, busy=False) is None
    assert governor.share == 1.0


def test_idle_ticks_in_the_dead_band_raise_the_bound_again() -> None:
    """Another process keeps the lag between the thresholds: with no calls of ours the
    bound still comes back up (it would stay at the floor forever otherwise)."""
    settings = BoundSettings(breach_ticks=1, healthy_ticks=10)
    governor = BoundGovernor(settings)
    for _ in range(10):
        governor.tick(1.0, busy=True)
    assert governor.share == settings.min_share
    in_band = (settings.lag_low_s + settings.lag_high_s) / 2
    for _ in range(200):
        governor.tick(in_band, busy=False)
    assert governor.share == 1.0
    # While our calls run in the dead band, it holds.
    governor.tick(1.0, busy=True)
    lowered = governor.share
    for _ in range(200):
        governor.tick(in_band, busy=True)
    assert governor.share == lowered < 1.0


def test_the_bound_never_goes_below_its_floor() -> None:
    settings = BoundSettings(min_share=0.3, breach_ticks=1)
    governor = BoundGovernor(settings)
    changes = [governor.tick(5.0, busy=True) for _ in range(50)]
    assert governor.share == 0.3
    moves = [c for c in changes if c is not None]
    assert all(c.direction == LOWERED for c in moves) and len(moves) == 5  # then it stays


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lag_low_s": 0.3, "lag_high_s": 0.2},
        {"breach_ticks": 0},
        {"step_down": 1.0},
        {"step_up": 0.0},
        {"min_share": 0.0},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        BoundSettings(**kwargs)  # type: ignore[arg-type]


class Collected:
    """An event sink that keeps what is published (the node's is the EventStream)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)


def test_the_watch_moves_every_limit_and_says_so() -> None:
    settings = LimiterSettings(min_limit=4, initial_limit=32, max_limit=MAX_LIMIT)
    limiters = [AdaptiveLimiter("mcp", settings), AdaptiveLimiter("unit:x", settings)]
    sink = Collected()
    watch = OverloadWatch(
        lambda: limiters,
        lambda *_: None,
        LoopSupervisor(),
        calls=lambda: (0, 0),
        pain_after_s=0.0,
        governor=BoundGovernor(BoundSettings(breach_ticks=2, healthy_ticks=2)),
        events=sink,
    )

    def tick(lag_s: float) -> None:
        for limiter in limiters:  # calls run in every tick
            assert limiter.try_acquire("normal")
            limiter.release(None, 0.0)
        watch.tick(lag_s)

    for _ in range(2):
        tick(0.5)
    assert [limiter.max_limit for limiter in limiters] == [48.0, 48.0]
    assert [limiter.limit for limiter in limiters] == [32.0, 32.0]  # below the bound: kept
    for _ in range(4):
        tick(0.5)
    bound = MAX_LIMIT * 0.4219  # 0.75³, rounded
    assert [limiter.max_limit for limiter in limiters] == [pytest.approx(bound)] * 2
    assert all(limiter.limit <= bound for limiter in limiters)  # clamped to the new bound
    moves = [e for e in sink.events if isinstance(e, LimitBoundChanged)]
    assert [(m.direction, m.share) for m in moves] == [
        (LOWERED, 0.75),
        (LOWERED, 0.5625),
        (LOWERED, 0.4219),
    ]
    assert moves[0].previous == 1.0 and moves[0].lag_ms == 500.0
    for _ in range(2):
        tick(0.01)
    assert moves != [e for e in sink.events if isinstance(e, LimitBoundChanged)]
    last = sink.events[-1]
    assert isinstance(last, LimitBoundChanged) and last.direction == RAISED
    view = watch.view()["bound"]
    assert view is not None and view["share"] == last.share and view["changes"] == 4
