"""Adaptive concurrency limits (System 2/3): how many calls an entry runs at once,
following measured latency; beyond it, calls are refused at once, lowest class first.

One `AdaptiveLimiter` guards each entry: the `/mcp` gateway (calls entering the mesh
at this node), the calls this node serves for peers, and each System 1 unit. It never
queues: `try_acquire` answers at once, so a refused call costs microseconds and the
caller learns when to come back (`retry_after_s`).

The rule (Vegas-style, as Netflix concurrency-limits' VegasLimit, with the queue
estimated from the calls actually in flight by Little's law, and a windowed minimum RTT
as the baseline; the constants are in docs/regulation.md). Latencies are taken in
windows of one round of calls (`max(MIN_WINDOW_SAMPLES, limit)` samples, so about every
call in flight has been replaced); each sample also notes how many calls were in flight
when it ended. At the end of each window:

    rtt        =  the window's mean latency
    in_flight  =  the window's mean number of calls in flight
    rtt_min    =  the baseline: falls at once to any smaller latency; every
                  `baseline_window_s` it rises to that window's minimum, by at most
                  BASELINE_RISE (so a saturated entry, whose every latency includes
                  queueing, cannot ratchet its own baseline up, while a tool that
                  really got slower is followed within minutes)
    queue      =  in_flight * (1 - rtt_min / rtt)      (calls waiting, Little's law)
    allowed    =  max(MIN_QUEUE, (tolerance - 1) * in_flight * rtt_min / rtt)
    target     =  limit - (queue - allowed)            if queue > allowed
               =  limit + sqrt(limit)                  if queue < allowed / 2 and the
                                                          entry used >= half its limit
               =  limit                                otherwise (the dead band)
    limit      <- limit + smoothing * (target - limit),   clamped to [min_limit, max_limit]

`in_flight * rtt_min / rtt` is the concurrency the service delivers at its no-load
latency, so `allowed` is `tolerance - 1` times it — latency may reach `tolerance`
times the baseline — but never fewer than MIN_QUEUE calls: about one call waiting is
what keeps a small service busy between arrivals, and it keeps the limit from
collapsing when the whole machine, not our queue, makes every call slower (then
`queue` shrinks with the limit, so the limit stops falling near
MIN_QUEUE / (1 - 1 / slowdown) instead of at `min_limit`). Above the band the limit
drops the excess queue; below it, it probes upward by `sqrt(limit)` (only while the
entry actually uses its limit); in between it holds. One update per window, not per
call: the calls of one window all saw the same limit, and updating on each of them
would apply the same evidence `limit` times (an effective gain near 1, which swings).
The update is a first-order low-pass (`smoothing` < 1) towards the band, and the band's
dead zone stops the probe before the cut, so a step of load makes the limit settle
without swinging (tests/node/vsm/test_concurrency.py).

Priority shares. A class may use only a share of the limit (`low` 50 %, `normal` 80 %,
`high` 95 %): when the entry is busy, lower classes are refused first and the rest is
kept for higher ones. `critical` is never refused for load (it is counted in flight).
"""

from __future__ import annotations

import math
from typing import Any, Final

from vsmcp.node.vsm.limiter_settings import MIN_QUEUE, LimiterSettings
from vsmcp.node.vsm.priority import CRITICAL, PRIORITY_CLASSES, Priority

MIN_WINDOW_SAMPLES: Final = 10
BASELINE_RISE: Final = 0.1
MIN_RETRY_AFTER_S: Final = 0.001
# Retry-after is the short RTT capped here: a refused caller comes back soon, not never.
MAX_RETRY_AFTER_S: Final = 5.0


class AdaptiveLimiter:
    """One entry's limit. Time is passed in (`now`, seconds, monotonic) so tests drive it."""

    __slots__ = (
        "_base",
        "_base_since",
        "_base_window",
        "_busy",
        "_window_flight",
        "_window_n",
        "_window_sum",
        "admitted",
        "bound",
        "inflight",
        "limit",
        "name",
        "refused",
        "rtt_short",
        "samples",
        "scale",
        "settings",
    )

    def __init__(self, name: str, settings: LimiterSettings, now: float = 0.0) -> None:
        self.name = name
        self.settings = settings
        self.limit = float(settings.initial_limit)
        self.inflight = 0
        self.rtt_short: float | None = None
        self._base = math.inf  # the baseline (min RTT)
        self._base_window = math.inf  # the smallest latency of the current window
        self._base_since = now
        self._busy = 0  # the most calls in flight since the last update
        self._window_n = 0
        self._window_sum = 0.0
        self._window_flight = 0
        self.samples = 0
        self.admitted: dict[str, int] = dict.fromkeys(PRIORITY_CLASSES, 0)
        self.refused: dict[str, int] = dict.fromkeys(PRIORITY_CLASSES, 0)
        # System 5's `tighten_limit` scales the upper bound (1.0: as configured), and so
        # does System 3 from its KPIs (`node.vsm.bounds`); both apply.
        self.scale = 1.0
        self.bound = 1.0

    @property
    def max_limit(self) -> float:
        s = self.settings
        return max(float(s.min_limit), s.max_limit * self.scale * self.bound)

    def allowed(self, priority: Priority) -> int:
        """How many calls may be in flight when one of `priority` is admitted."""
        return max(1, math.floor(self.limit * self.settings.shares[priority]))

    def try_acquire(self, priority: Priority) -> bool:
        """Admit one call (True) or refuse it now (False; counted in `refused`)."""
        if priority != CRITICAL and self.inflight >= self.allowed(priority):
            self.refused[priority] += 1
            return False
        self.inflight += 1
        self.admitted[priority] += 1
        self._busy = max(self._busy, self.inflight)
        return True

    def release(self, rtt_s: float | None, now: float) -> None:
        """One admitted call ended after `rtt_s` seconds; None: its latency says nothing
        of this entry's load (refused further in, cancelled), so it is not sampled."""
        in_flight = self.inflight
        self.inflight = max(0, in_flight - 1)
        if rtt_s is not None and rtt_s >= 0 and math.isfinite(rtt_s):
            self.sample(rtt_s, now, max(1, in_flight))

    def baseline(self) -> float | None:
        return None if math.isinf(self._base) else self._base

    def sample(self, rtt_s: float, now: float, in_flight: int = 1) -> None:
        """Take one latency (and the calls in flight as it ended, itself included) into
        the window; update the limit at the window's end (the rule in the module
        docstring)."""
        s = self.settings
        rtt_s = max(rtt_s, 1e-6)
        if now - self._base_since >= s.baseline_window_s:
            if not math.isinf(self._base_window):
                self._base = min(self._base_window, self._base * (1 + BASELINE_RISE))
            self._base_window = math.inf
            self._base_since = now
        self._base_window = min(self._base_window, rtt_s)
        self._base = min(self._base, rtt_s)
        self.samples += 1
        self._window_n += 1
        self._window_sum += rtt_s
        self._window_flight += in_flight
        if self._window_n < max(MIN_WINDOW_SAMPLES, self.limit):
            return
        rtt = self._window_sum / self._window_n
        flight = self._window_flight / self._window_n
        self._window_n, self._window_sum, self._window_flight = 0, 0.0, 0
        self.rtt_short = rtt
        no_load = flight * min(1.0, self._base / rtt)  # in flight were there no queue
        queue = flight - no_load
        allowed = max(MIN_QUEUE, (s.tolerance - 1) * no_load)
        limit = self.limit
        if queue > allowed:
            target = limit - (queue - allowed)
        elif queue < allowed / 2 and self._busy >= limit / 2:
            target = limit + math.sqrt(limit)
        else:
            target = limit  # in the band, or app-limited: unused room says nothing
        limit += s.smoothing * (target - limit)
        self.limit = min(self.max_limit, max(float(s.min_limit), limit))
        self._busy = self.inflight

    def set_scale(self, factor: float) -> None:
        """System 5's `tighten_limit`: the upper bound times `factor` in (0, 1]."""
        self.scale = _share(factor)
        self.limit = min(self.limit, self.max_limit)

    def set_bound(self, share: float) -> None:
        """System 3's bound (`node.vsm.bounds`): the upper bound times `share` in (0, 1]."""
        self.bound = _share(share)
        self.limit = min(self.limit, self.max_limit)

    def retry_after_s(self) -> float:
        """When a refused caller may try again: about one call's latency here (the last
        window's mean; before any, the smallest latency seen)."""
        short = self.rtt_short if self.rtt_short is not None else self.baseline()
        short = MIN_RETRY_AFTER_S if short is None else short
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, short))

    def refused_total(self) -> int:
        return sum(self.refused.values())

    def view(self) -> dict[str, Any]:
        base = self.baseline()
        return {
            "limit": round(self.limit, 2),
            "max_limit": round(self.max_limit, 2),
            "in_flight": self.inflight,
            "rtt_ms": None if self.rtt_short is None else round(self.rtt_short * 1000, 3),
            "baseline_ms": None if base is None else round(base * 1000, 3),
            "admitted": dict(self.admitted),
            "refused": dict(self.refused),
        }


def _share(factor: float) -> float:
    if not 0 < factor <= 1:
        raise ValueError(f"scale must be in (0, 1], got {factor}")
    return factor
