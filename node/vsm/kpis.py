"""System 3's call KPIs: calls, errors and latency percentiles over a time window.

Fed by the event stream's `tool_call` events (a subscriber, off the call path). Each
call is kept as (time, latency, failed) for `window_s` seconds, at most `max_calls` of
them (the oldest go first, counted in `evicted`): percentiles over the window are exact
for the calls kept.

A call *failed* when the node did not serve it for a reason of its own: a timeout, a
unit that is not running, a tool's error result or fault. Refusals that are the
caller's doing (`CALLER_OUTCOMES`: a zone it may not use, bad arguments, an unknown
tool, a call it cancelled) are counted as calls but not as failures: otherwise anyone
probing a restricted tool would lower the node's viability.

Calls a limit refused before they ran (`REFUSED_OUTCOMES`: `overloaded` — a unit's or
an entry's concurrency limit —, `shed` by System 5, `rate_limited`) are neither: they
are the regulation working, not the node failing, so they stay out of the window (no
failure, no call, no latency — their sub-millisecond answers would hide the latency of
the calls that ran, their number would dilute real failures) and are only counted
(`refused`). Sustained shedding reaches viability by its own path: the overload watch
counts these refusals (`total_refused`, whatever limit refused, with or without
`[vsm.concurrency]`) and raises pain (`node/vsm/overload.py`), which lowers the
algedonic factor.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

from vsmcp.node.vsm.events import Event, ToolCallFinished

DEFAULT_WINDOW_S = 60.0
DEFAULT_MAX_CALLS = 50_000
PERCENTILES = (50, 95, 99)
CALLER_OUTCOMES = frozenset({"ok", "zone_denied", "invalid_arguments", "unknown_tool", "cancelled"})
REFUSED_OUTCOMES = frozenset({"overloaded", "shed", "rate_limited"})


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class CallKpis:
    """The window of finished calls. Time is passed in (`now`, seconds, as events' `ts`)."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, max_calls: int = DEFAULT_MAX_CALLS):
        if window_s <= 0 or max_calls < 1:
            raise ValueError("window_s must be > 0 and max_calls >= 1")
        self.window_s = window_s
        self._calls: deque[tuple[float, float, bool]] = deque(maxlen=max_calls)
        self._failed = 0  # failed calls in the window
        self._refused: deque[float] = deque(maxlen=max_calls)  # times of refusals
        # The window's latencies sorted, for as long as the window has not changed: one
        # VSM view asks several times (its KPIs, the viability score and its inputs),
        # and a sort of 50,000 latencies costs milliseconds on a busy node.
        self._sorted: list[float] | None = None
        self.evicted = 0
        self.total = 0
        self.total_failed = 0
        self.total_refused = 0

    def record(self, ts: float, latency_ms: float, failed: bool) -> None:
        if len(self._calls) == self._calls.maxlen:
            self.evicted += 1
            self._failed -= self._calls[0][2]
        self._calls.append((ts, latency_ms, failed))
        self._failed += failed
        self._sorted = None
        self.total += 1
        self.total_failed += failed

    def refused(self, ts: float) -> None:
        """A call a limit refused before it ran (`REFUSED_OUTCOMES`): counted only."""
        self._refused.append(ts)
        self.total_refused += 1

    def on_events(self, batch: Iterable[Event]) -> None:
        """The stream subscriber (`tool_call` events only)."""
        for event in batch:
            if isinstance(event, ToolCallFinished):
                if event.outcome in REFUSED_OUTCOMES:
                    self.refused(event.ts)
                else:
                    self.record(event.ts, event.latency_ms, event.outcome not in CALLER_OUTCOMES)

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._refused and self._refused[0] <= horizon:
            self._refused.popleft()
        while self._calls and self._calls[0][0] <= horizon:
            self._failed -= self._calls.popleft()[2]
            self._sorted = None

    def _sorted_latencies(self) -> list[float]:
        if self._sorted is None:
            self._sorted = sorted(latency for _, latency, _ in self._calls)
        return self._sorted

    def error_ratio(self, now: float) -> float:
        """Failed / all calls in the window; 0.0 without calls."""
        self._expire(now)
        if not self._calls:
            return 0.0
        return self._failed / len(self._calls)

    def latency_ms(self, now: float, pct: float) -> float | None:
        """The window's latency percentile; None without calls."""
        self._expire(now)
        if not self._calls:
            return None
        return percentile(self._sorted_latencies(), pct)

    def view(self, now: float) -> dict[str, Any]:
        self._expire(now)
        latencies = self._sorted_latencies()
        errors = self._failed
        return {
            "window_s": self.window_s,
            "calls": len(latencies),
            "errors": errors,
            "error_ratio": round(errors / len(latencies), 6) if latencies else 0.0,
            "latency_ms": {f"p{p}": round(percentile(latencies, p), 3) for p in PERCENTILES}
            if latencies
            else None,
            "refused": len(self._refused),
            "calls_total": self.total,
            "errors_total": self.total_failed,
            "refused_total": self.total_refused,
            "evicted": self.evicted,
        }
