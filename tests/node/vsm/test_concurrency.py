"""The adaptive concurrency limit: bounds, priority shares, immediate refusals, and a
step of load that makes the limit settle without swinging."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsmcp.node.vsm.concurrency import AdaptiveLimiter
from vsmcp.node.vsm.limiter_settings import LimiterSettings
from vsmcp.node.vsm.priority import PRIORITY_CLASSES

BASE_S = 0.010


def limiter(**kw: object) -> AdaptiveLimiter:
    return AdaptiveLimiter("test", LimiterSettings(**kw))  # type: ignore[arg-type]


def test_shares_keep_room_for_higher_classes() -> None:
    lim = limiter(min_limit=1, initial_limit=20, max_limit=20)
    admitted = {}
    for priority in ("low", "normal", "high"):
        while lim.try_acquire(priority):
            pass
        admitted[priority] = lim.inflight
    # low stops at 50 % of 20, normal at 80 %, high at 95 % (counting what is in flight).
    assert admitted == {"low": 10, "normal": 16, "high": 19}
    assert lim.refused == {"low": 1, "normal": 1, "high": 1, "critical": 0}
    for _ in range(100):
        assert lim.try_acquire("critical")  # never refused for load
    assert lim.inflight == 119


def test_a_refusal_is_immediate_with_a_retry_after() -> None:
    lim = limiter(min_limit=1, initial_limit=1, max_limit=1)
    assert lim.try_acquire("high")
    lim.release(0.2, now=1.0)
    assert lim.try_acquire("high")
    assert not lim.try_acquire("high")
    assert 0.001 <= lim.retry_after_s() <= 0.2


def test_unsampled_release_does_not_move_the_limit() -> None:
    lim = limiter(initial_limit=10)
    assert lim.try_acquire("normal")
    lim.release(None, now=1.0)
    assert (lim.limit, lim.samples, lim.inflight) == (10.0, 0, 0)


def test_unused_room_does_not_grow_the_limit() -> None:
    lim = limiter(initial_limit=32, max_limit=256)
    for i in range(1000):  # one call at a time, always fast: the entry is app-limited
        assert lim.try_acquire("normal")
        lim.release(BASE_S, now=i * 0.01)
    assert lim.limit == 32.0


def test_rising_latency_lowers_the_limit_to_the_floor_not_below() -> None:
    lim = limiter(min_limit=4, initial_limit=64, max_limit=256)
    for i in range(20):
        lim.try_acquire("normal")
        lim.release(BASE_S, now=i * 0.01)
    while lim.try_acquire("normal"):
        pass
    for i in range(2000):  # closed loop: each call ends 50× slower and is replaced
        lim.release(BASE_S * 50, now=1 + i * 0.01)
        while lim.try_acquire("normal"):
            pass
    # Nearly every call in flight is counted as queued: the limit falls to its floor.
    assert lim.limit == 4.0


def test_one_slow_call_at_a_time_is_no_queue() -> None:
    # A tool that got 50× slower, called one at a time: nothing waits at this entry, so
    # the limit has no queue to cut (the gradient rule used to cut it to its floor).
    lim = limiter(min_limit=4, initial_limit=64, max_limit=256)
    for i in range(20):
        lim.try_acquire("normal")
        lim.release(BASE_S, now=i * 0.01)
    for i in range(2000):
        lim.try_acquire("normal")
        lim.release(BASE_S * 50, now=1 + i * 0.01)
    assert lim.limit == 64.0


def simulate(
    capacity: int,
    offered: list[int],
    lim: AdaptiveLimiter,
    *,
    dt: float = 0.05,
    slowdown: float = 1.0,
) -> list[float]:
    """A closed loop against a server that runs `capacity` calls at once: latency is
    BASE_S until then and grows with the queue (as in M/D/c under saturation), times
    `slowdown` (a busy machine making every call slower). Each tick, `offered[t]`
    clients want a call; the limiter admits what it allows (normal class) and each
    admitted call feeds one latency sample. Returns the limit per tick."""
    history = []
    now = 0.0
    for want in offered:
        admitted = 0
        for _ in range(want):
            if not lim.try_acquire("normal"):
                break
            admitted += 1
        latency = BASE_S * slowdown * max(1.0, lim.inflight / capacity)
        for _ in range(admitted):
            lim.release(latency, now)
        now += dt
        history.append(lim.limit)
    return history


def sign_changes(values: list[float], eps: float) -> int:
    deltas = [b - a for a, b in itertools.pairwise(values) if abs(b - a) > eps]
    return sum(1 for a, b in itertools.pairwise(deltas) if (a > 0) != (b > 0))


def admitted_latency(lim: AdaptiveLimiter, capacity: int) -> float:
    return BASE_S * max(1.0, lim.allowed("normal") / capacity)


def test_a_step_of_load_settles_without_swinging() -> None:
    capacity = 20
    lim = limiter(min_limit=4, initial_limit=16, max_limit=256, smoothing=0.2, tolerance=1.5)
    # 200 ticks at 10 clients (below capacity), then a step to 400 clients (20×).
    history = simulate(capacity, [10] * 200 + [400] * 800, lim)
    before, after = history[:200], history[200:]
    # Below capacity the limit grew only while the clients used half of it or more.
    assert 16 <= before[-1] <= 2 * 10 + 1
    settled = after[-300:]
    final = settled[-1]
    # It settles where admitted calls' latency stays within 2× the unloaded one.
    assert capacity <= final
    assert admitted_latency(lim, capacity) <= 2 * BASE_S
    assert max(settled) - min(settled) <= 0.02 * final
    # Bounded overshoot, and no swing on the way there (changes above 1 % of the limit).
    assert max(after) <= 1.1 * final
    assert sign_changes(after, eps=0.01 * final) == 0


def test_saturation_from_a_cold_start_does_not_ratchet_the_baseline_up() -> None:
    # Saturated from the first call: the baseline is what it first saw, and may only
    # rise by BASELINE_RISE per window; the limit must not creep up with it.
    lim = limiter(min_limit=4, initial_limit=16, max_limit=256, baseline_window_s=5.0)
    history = simulate(10, [400] * 4000, lim)  # 200 s: 40 baseline windows
    assert max(history[-1000:]) <= 1.1 * history[-1000]


def test_a_step_down_of_latency_recovers_the_limit() -> None:
    lim = limiter(min_limit=4, initial_limit=16, max_limit=256)
    simulate(5, [3] * 100, lim)  # measure the unloaded latency first
    slow = simulate(5, [400] * 400, lim)
    # At so small a capacity the sqrt(limit) headroom weighs: 2.2× here.
    assert admitted_latency(lim, 5) <= 2.5 * BASE_S
    assert slow[-1] <= 15
    fast = simulate(60, [400] * 600, lim)  # capacity grows 12×
    assert fast[-1] >= 60
    assert admitted_latency(lim, 60) <= 2 * BASE_S
    assert sign_changes(fast, eps=0.01 * fast[-1]) <= 1


def test_a_small_service_keeps_a_short_queue_and_survives_a_slow_machine() -> None:
    # The benchmark's service: 4 workers. Saturated, the limit keeps a short queue
    # (about MIN_QUEUE calls) — admitted latency ≤ 1.5× — and still runs every worker.
    capacity = 4
    lim = limiter(min_limit=2, initial_limit=8, max_limit=64, tolerance=1.1)
    simulate(capacity, [2] * 50, lim)  # the unloaded latency first
    history = simulate(capacity, [400] * 600, lim)
    assert lim.allowed("normal") >= capacity
    assert admitted_latency(lim, capacity) <= 1.5 * BASE_S
    assert sign_changes(history[100:], eps=0.01 * history[-1]) == 0
    # The whole machine now makes every call 1.2× slower (no queue of ours): the limit
    # does not collapse to its floor, every worker stays busy (it would stop falling
    # at about MIN_QUEUE / (1 - 1/1.2) = 6 calls in flight).
    slow = simulate(capacity, [400] * 600, lim, slowdown=1.2)
    assert min(slow) > lim.settings.min_limit
    assert lim.allowed("normal") >= capacity


def test_scale_lowers_the_bound_at_once() -> None:
    lim = limiter(min_limit=4, initial_limit=100, max_limit=100)
    lim.set_scale(0.5)
    assert lim.limit == 50.0 and lim.max_limit == 50.0
    lim.set_scale(0.01)
    assert lim.limit == 4.0  # never below the floor
    with pytest.raises(ValueError):
        lim.set_scale(0)


@pytest.mark.parametrize(
    "kw",
    [
        {"min_limit": 0},
        {"min_limit": 10, "initial_limit": 5},
        {"initial_limit": 300, "max_limit": 256},
        {"smoothing": 0.0},
        {"tolerance": 0.9},
        {"baseline_window_s": 0},
        {"shares": {"low": 0.5, "normal": 0.8, "high": 0.95}},
    ],
)
def test_bad_settings_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LimiterSettings(**kw)  # type: ignore[arg-type]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.sampled_from(PRIORITY_CLASSES)),
        st.tuples(st.just("release"), st.floats(0, 10, allow_nan=False)),
        st.tuples(st.just("drop"), st.none()),
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(1, 50), st.integers(0, 50), st.integers(0, 200))
def test_invariants_under_any_sequence(
    sequence: list[tuple[str, object]], floor: int, above: int, headroom: int
) -> None:
    lim = limiter(min_limit=floor, initial_limit=floor + above, max_limit=floor + above + headroom)
    now = 0.0
    for op, arg in sequence:
        now += 0.01
        if op == "acquire":
            before = lim.inflight
            ok = lim.try_acquire(arg)  # type: ignore[arg-type]
            if arg == "critical":
                assert ok
            else:
                assert ok == (before < lim.allowed(arg))  # type: ignore[arg-type]
        elif lim.inflight:
            lim.release(arg if op == "release" else None, now)  # type: ignore[arg-type]
        assert lim.settings.min_limit <= lim.limit <= lim.settings.max_limit
        assert math.isfinite(lim.limit) and lim.inflight >= 0
        assert lim.retry_after_s() > 0
