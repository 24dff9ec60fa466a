"""Token-bucket rate limits (S2): per origin and per tool, in bounded LRU maps.

A call that came over the mesh is limited at its provider per (entry node, origin the
entry node named): two clients behind one entry node do not share a bucket. The origin
is the entry node's claim, so each entry node also has one bucket for all its callers
(`per-peer`): naming fresh origins cannot multiply what it gets. A call the peer bucket
refuses makes no bucket for the origin it named, so such names evict nothing; and the
(entry node, origin) buckets are kept apart from local origins', so no peer can push a
local caller's bucket out.

A bucket holds at most `burst` tokens and refills at `rate_per_s`. A call costs one
token. When a bucket cannot pay, the caller is told exactly how long to wait
(`retry_after_s`): after that delay the same request would be granted, provided
nothing else drew from the bucket meanwhile.

Memory bound: at most `max_buckets` buckets per kind (origin, tool, peer, peer origin).
The least recently used bucket is evicted first (counted in `evicted`); an evicted key
comes back with a full bucket, so eviction can only ever be generous to a key that has
been idle longest.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

DEFAULT_MAX_BUCKETS = 10_000
# Without `limits.per_peer`, all callers behind one entry node together may draw this
# many times one origin's limit: room for a few busy clients behind a node, while the
# origins it names cannot multiply its share.
PEER_LIMIT_FACTOR = 8

LimitKind = Literal["per-origin", "per-tool", "per-peer"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`rate_per_s` tokens per second, at most `burst` saved up."""

    rate_per_s: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.rate_per_s > 0 and math.isfinite(self.rate_per_s)):
            raise ValueError(f"rate_per_s must be a positive finite number, got {self.rate_per_s}")
        if not (self.burst >= 1 and math.isfinite(self.burst)):
            raise ValueError(f"burst must be a finite number >= 1, got {self.burst}")


@dataclass(slots=True)
class TokenBucket:
    """One bucket. Time is passed in (`now`, seconds on a monotonic clock) so tests can drive it."""

    limit: RateLimit
    tokens: float
    updated: float

    @classmethod
    def full(cls, limit: RateLimit, now: float) -> TokenBucket:
        return cls(limit=limit, tokens=limit.burst, updated=now)

    def _refill(self, now: float) -> None:
        # A clock that steps backwards must not mint tokens nor push `updated` back.
        if now > self.updated:
            refill = (now - self.updated) * self.limit.rate_per_s
            self.tokens = min(self.limit.burst, self.tokens + refill)
            self.updated = now

    def wait_s(self, now: float, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are available (0.0 if now); does not take them.

        `math.inf` when `cost` exceeds the burst: such a request can never be granted.
        """
        self._refill(now)
        if self.tokens >= cost:
            return 0.0
        if cost > self.limit.burst:
            return math.inf
        return (cost - self.tokens) / self.limit.rate_per_s

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take `cost` tokens and return 0.0, or take nothing and return the wait."""
        wait = self.wait_s(now, cost)
        if wait == 0.0:
            self.tokens -= cost
        return wait


class BucketMap:
    """Buckets by key with a bounded LRU; keys without a limit are unlimited."""

    def __init__(
        self,
        default: RateLimit | None,
        overrides: Mapping[str, RateLimit] | None = None,
        *,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
    ) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be >= 1")
        self._default = default
        self._overrides = dict(overrides or {})
        self._max = max_buckets
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.evicted = 0
        self.scale = 1.0

    def set_scale(self, factor: float) -> None:
        """Scale every limit (rate and burst, burst at least 1) by `factor` in (0, 1];
        1.0 restores the configured limits. Buckets keep their tokens, capped at the new
        burst: tightening takes effect at once, restoring refills at the restored rate."""
        if not 0 < factor <= 1:
            raise ValueError(f"scale must be in (0, 1], got {factor}")
        self.scale = factor
        for key, bucket in self._buckets.items():
            limit = self.limit_for(key)
            if limit is not None:
                bucket.limit = limit
                bucket.tokens = min(bucket.tokens, limit.burst)

    def __len__(self) -> int:
        return len(self._buckets)

    def limit_for(self, key: str) -> RateLimit | None:
        limit = self._overrides.get(key, self._default)
        if limit is None or self.scale == 1.0:
            return limit
        return RateLimit(limit.rate_per_s * self.scale, max(1.0, limit.burst * self.scale))

    def bucket(self, key: str, now: float) -> TokenBucket | None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
            return bucket
        limit = self.limit_for(key)
        if limit is None:
            return None
        bucket = TokenBucket.full(limit, now)
        self._buckets[key] = bucket
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
            self.evicted += 1
        return bucket

    def peek(self, key: str) -> TokenBucket | None:
        """The key's bucket if it has one; never makes one."""
        return self._buckets.get(key)


@dataclass(frozen=True, slots=True)
class LimitExceeded:
    """Why a call was refused and when to retry."""

    limit: LimitKind
    key: str
    retry_after_s: float


_Charge = tuple[LimitKind, str, TokenBucket | None]


@dataclass(slots=True)
class RateLimiter:
    """Per-origin and per-tool buckets (and, for calls over the mesh, per-peer ones); a
    call must pass every bucket it draws on, and pays all or none."""

    per_origin: BucketMap = field(default_factory=lambda: BucketMap(None))
    per_tool: BucketMap = field(default_factory=lambda: BucketMap(None))
    # `mesh:<entry node>`: everything one entry node sends, whatever origins it names.
    per_peer: BucketMap = field(default_factory=lambda: BucketMap(None))
    # `mesh:<entry node>/<origin there>`: one caller behind one entry node.
    per_peer_origin: BucketMap = field(default_factory=lambda: BucketMap(None))
    clock: Callable[[], float] = time.monotonic

    def acquire(
        self, origin: str, tool: str, *, entry_origin: str | None = None
    ) -> LimitExceeded | None:
        """Charge one token to each bucket the call draws on, or refuse naming the tighter
        limit. `entry_origin` is set for a call over the mesh (`origin` is then
        `mesh:<entry node>`): it names the caller at the entry node."""
        now = self.clock()
        if entry_origin is None:
            charges: list[_Charge] = [("per-origin", origin, self.per_origin.bucket(origin, now))]
        else:
            charges = self._mesh_charges(origin, entry_origin, now)
        charges.append(("per-tool", tool, self.per_tool.bucket(tool, now)))
        waits = [
            LimitExceeded(kind, key, w)
            for kind, key, bucket in charges
            if bucket is not None and (w := bucket.wait_s(now)) > 0
        ]
        if waits:
            return max(waits, key=lambda e: e.retry_after_s)
        for _, _, bucket in charges:
            if bucket is not None:
                bucket.take(now)
        return None

    def _mesh_charges(self, peer: str, entry_origin: str, now: float) -> list[_Charge]:
        peer_bucket = self.per_peer.bucket(peer, now)
        key = f"{peer}/{entry_origin}"
        if peer_bucket is not None and peer_bucket.wait_s(now) > 0:
            # Refused whatever the origin: make no bucket for the name it gave.
            origin_bucket = self.per_peer_origin.peek(key)
        else:
            origin_bucket = self.per_peer_origin.bucket(key, now)
        return [("per-peer", peer, peer_bucket), ("per-origin", key, origin_bucket)]

    def set_scale(self, factor: float) -> None:
        """Scale every bucket's limit by `factor` (System 5's `tighten_limit`; 1.0 restores)."""
        for buckets in (self.per_origin, self.per_tool, self.per_peer, self.per_peer_origin):
            buckets.set_scale(factor)

    def evictions(self) -> dict[str, int]:
        """Buckets evicted by the LRU bound, by kind."""
        return {
            "per-origin": self.per_origin.evicted,
            "per-tool": self.per_tool.evicted,
            "per-peer": self.per_peer.evicted,
            "per-peer-origin": self.per_peer_origin.evicted,
        }
