"""Token buckets: arithmetic properties with an injected clock, LRU bound, limiter semantics."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.limits import BucketMap, RateLimit, RateLimiter, TokenBucket

rates = st.floats(min_value=0.01, max_value=1000, allow_nan=False)
bursts = st.floats(min_value=1, max_value=1000, allow_nan=False)
steps = st.lists(
    st.tuples(st.floats(min_value=0, max_value=10, allow_nan=False), st.floats(0.01, 5)),
    max_size=60,
)


@given(rates, bursts, steps)
def test_never_grants_more_than_burst_plus_refill(rate: float, burst: float, ops: list) -> None:
    limit = RateLimit(rate, burst)
    now = 0.0
    bucket = TokenBucket.full(limit, now)
    granted = 0.0
    for dt, cost in ops:
        now += dt
        if bucket.take(now, cost) == 0.0:
            granted += cost
        assert -1e-9 <= bucket.tokens <= burst + 1e-9
    assert granted <= burst + rate * now + 1e-6


@given(rates, bursts, steps, st.floats(0.01, 1))
def test_retry_after_is_exact(rate: float, burst: float, ops: list, cost: float) -> None:
    limit = RateLimit(rate, burst)
    now = 0.0
    bucket = TokenBucket.full(limit, now)
    for dt, c in ops:
        now += dt
        bucket.take(now, c)
    wait = bucket.take(now, cost)
    if wait == 0.0:
        return
    assert math.isfinite(wait)
    # Waiting the advertised time is enough; waiting visibly less is not.
    probe = TokenBucket(limit, bucket.tokens, bucket.updated)
    assert probe.take(now + wait * (1 + 1e-9) + 1e-12, cost) == 0.0
    early = TokenBucket(limit, bucket.tokens, bucket.updated)
    if wait > 1e-6:
        assert early.take(now + wait * 0.5, cost) > 0.0


@given(rates, bursts, st.floats(0, 100), st.floats(0, 100))
def test_backwards_clock_mints_nothing(rate: float, burst: float, t: float, back: float) -> None:
    bucket = TokenBucket(RateLimit(rate, burst), tokens=0.0, updated=t)
    bucket.wait_s(t - back)
    assert bucket.tokens == 0.0
    assert bucket.updated == t


def test_cost_above_burst_is_never_granted() -> None:
    bucket = TokenBucket.full(RateLimit(1, 2), 0.0)
    assert bucket.take(1000.0, 3) == math.inf


@given(st.integers(1, 20), st.lists(st.text(max_size=3), max_size=100))
def test_bucket_map_is_bounded(max_buckets: int, keys: list[str]) -> None:
    buckets = BucketMap(RateLimit(1, 1), max_buckets=max_buckets)
    for i, key in enumerate(keys):
        assert buckets.bucket(key, float(i)) is not None
        assert len(buckets) <= max_buckets


def test_unlimited_key_has_no_bucket() -> None:
    buckets = BucketMap(None, {"slow": RateLimit(1, 1)})
    assert buckets.bucket("other", 0.0) is None
    assert buckets.bucket("slow", 0.0) is not None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_limiter_names_the_limit_and_charges_both_or_neither() -> None:
    clock = FakeClock()
    limiter = RateLimiter(
        per_origin=BucketMap(RateLimit(1, 2)),
        per_tool=BucketMap(None, {"echo": RateLimit(0.5, 1)}),
        clock=clock,
    )
    assert limiter.acquire("a", "echo") is None
    refused = limiter.acquire("a", "echo")
    assert refused is not None
    assert refused.limit == "per-tool"
    assert refused.retry_after_s == pytest.approx(2.0)
    # The refused call did not charge the origin: two more calls to another tool pass.
    assert limiter.acquire("a", "other") is None
    refused = limiter.acquire("a", "other")
    assert refused is not None and refused.limit == "per-origin"
    clock.now = 2.0
    assert limiter.acquire("a", "echo") is None


def test_rate_limit_validates() -> None:
    with pytest.raises(ValueError):
        RateLimit(0, 1)
    with pytest.raises(ValueError):
        RateLimit(1, 0.5)
