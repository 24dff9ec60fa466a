"""Token buckets: arithmetic properties with an injected clock, LRU bound, limiter semantics."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsmcp.node.tools.config import RateLimitConfig, RateLimitsConfig
from vsmcp.node.tools.registry import rate_limiter
from vsmcp.node.vsm.limits import PEER_LIMIT_FACTOR, BucketMap, RateLimit, RateLimiter, TokenBucket

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


# -- calls over the mesh: (entry node, origin) buckets under a per-peer cap ---------------

ENTRY = "mesh:12D3KooWentry"
OTHER_ENTRY = "mesh:12D3KooWother"


def mesh_limiter(
    clock: FakeClock, *, origin: RateLimit, peer: RateLimit, max_buckets: int = 100
) -> RateLimiter:
    return RateLimiter(
        per_origin=BucketMap(origin, max_buckets=max_buckets),
        per_peer=BucketMap(peer, max_buckets=max_buckets),
        per_peer_origin=BucketMap(origin, max_buckets=max_buckets),
        clock=clock,
    )


def test_two_origins_behind_one_entry_node_have_their_own_buckets() -> None:
    limiter = mesh_limiter(FakeClock(), origin=RateLimit(0.01, 2), peer=RateLimit(0.01, 10))
    for _ in range(2):
        assert limiter.acquire(ENTRY, "echo", entry_origin="http:alice") is None
    refused = limiter.acquire(ENTRY, "echo", entry_origin="http:alice")
    assert refused is not None
    assert (refused.limit, refused.key) == ("per-origin", f"{ENTRY}/http:alice")
    # Alice's exhausted bucket does not limit Bob behind the same entry node.
    assert limiter.acquire(ENTRY, "echo", entry_origin="http:bob") is None


def test_one_origin_gets_no_more_through_the_mesh_than_its_own_limit() -> None:
    clock = FakeClock()
    limiter = mesh_limiter(clock, origin=RateLimit(1, 2), peer=RateLimit(100, 100))
    granted = sum(
        limiter.acquire(ENTRY, "echo", entry_origin="http:alice") is None for _ in range(50)
    )
    assert granted == 2  # the per-peer room left does not help one origin
    clock.now = 1.0
    assert limiter.acquire(ENTRY, "echo", entry_origin="http:alice") is None
    assert limiter.acquire(ENTRY, "echo", entry_origin="http:alice") is not None


def test_fresh_origins_do_not_escape_the_per_peer_cap_nor_evict_buckets() -> None:
    limiter = mesh_limiter(
        FakeClock(), origin=RateLimit(0.01, 2), peer=RateLimit(0.01, 5), max_buckets=50
    )
    assert limiter.acquire("http:local", "echo") is None  # a local caller's bucket
    outcomes = [
        limiter.acquire(ENTRY, "echo", entry_origin=f"http:fresh-{i}") for i in range(10_000)
    ]
    assert sum(o is None for o in outcomes) == 5  # the per-peer burst, not 10,000
    refusals = {(o.limit, o.key) for o in outcomes if o is not None}
    assert refusals == {("per-peer", ENTRY)}
    # Refused calls made no bucket: nothing was evicted, the local caller's bucket stays.
    assert len(limiter.per_peer_origin) == 5
    assert limiter.evictions() == dict.fromkeys(
        ("per-origin", "per-tool", "per-peer", "per-peer-origin"), 0
    )
    assert limiter.per_origin.peek("http:local") is not None
    # Another entry node is not limited by this one's cap.
    assert limiter.acquire(OTHER_ENTRY, "echo", entry_origin="http:alice") is None


def test_buckets_stay_bounded_and_evictions_are_counted() -> None:
    limiter = mesh_limiter(FakeClock(), origin=RateLimit(1, 1), peer=RateLimit(1, 1), max_buckets=3)
    for i in range(10):
        assert limiter.acquire(f"mesh:node-{i}", "echo", entry_origin="http:a") is None
    assert len(limiter.per_peer) == 3 and len(limiter.per_peer_origin) == 3
    assert limiter.evictions()["per-peer"] == 7
    assert limiter.evictions()["per-peer-origin"] == 7


def test_the_per_peer_limit_defaults_to_a_multiple_of_the_per_origin_one() -> None:
    origin = RateLimitConfig(rate_per_s=2, burst=3)
    derived = rate_limiter(RateLimitsConfig(per_origin=origin))
    assert derived is not None
    assert derived.per_peer.limit_for(ENTRY) == RateLimit(
        2 * PEER_LIMIT_FACTOR, 3 * PEER_LIMIT_FACTOR
    )
    explicit = rate_limiter(
        RateLimitsConfig(
            per_origin=origin,
            per_peer=RateLimitConfig(rate_per_s=5, burst=5),
            origins={ENTRY: RateLimitConfig(rate_per_s=1, burst=1)},
        )
    )
    assert explicit is not None
    assert explicit.per_peer.limit_for(OTHER_ENTRY) == RateLimit(5, 5)
    assert explicit.per_peer.limit_for(ENTRY) == RateLimit(1, 1)  # a named entry node
    only_peer = rate_limiter(RateLimitsConfig(per_peer=RateLimitConfig(rate_per_s=1, burst=1)))
    assert only_peer is not None and only_peer.per_peer.limit_for(ENTRY) == RateLimit(1, 1)


def test_scaled_limits_tighten_at_once_and_restore() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_origin=BucketMap(RateLimit(10, 10)), clock=clock)
    for _ in range(3):
        assert limiter.acquire("a", "echo") is None  # 7 tokens left
    limiter.set_scale(0.5)  # rate 5/s, burst 5: the bucket is cut to 5
    for _ in range(5):
        assert limiter.acquire("a", "echo") is None
    refused = limiter.acquire("a", "echo")
    assert refused is not None and refused.retry_after_s == pytest.approx(0.2)  # 1 / (10 × 0.5)
    # A bucket made while tightened starts at the scaled burst, at least 1.
    limiter.set_scale(0.01)
    assert limiter.per_origin.limit_for("b") == RateLimit(0.1, 1.0)
    assert limiter.acquire("b", "echo") is None
    assert limiter.acquire("b", "echo") is not None
    limiter.set_scale(1.0)
    assert limiter.per_origin.limit_for("a") == RateLimit(10, 10)
    clock.now = 1.0  # restored rate: 10 tokens in a second
    for _ in range(10):
        assert limiter.acquire("a", "echo") is None
    with pytest.raises(ValueError):
        limiter.set_scale(1.5)


def test_scaling_an_unlimited_key_leaves_it_unlimited() -> None:
    buckets = BucketMap(None)
    buckets.set_scale(0.5)
    assert buckets.bucket("any", 0.0) is None
