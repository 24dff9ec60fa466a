"""System 3's overload watch: refusals for load over a sliding window, the event loop's
lag, and pain when shedding is sustained.

One owned loop (`overload-watch`) ticks every `interval_s`. Each tick it measures how
late it woke (the event loop's lag: a loop that is late for its own timer is late for
every call), and takes the node's calls refused for load and calls that ran since the
last tick (`calls`: the `tool_call` outcomes S3's KPIs count, so every refusal for load
— an adaptive limit's, a unit's full queue, System 5's shedding, a rate limit — counts
once per call, with or without `[vsm.concurrency]`).
When calls were refused in every tick for `pain_after_s`, it raises pain (source
`overload`) once per `pain_after_s` while it lasts, with intensity = the share of
calls refused over that streak, capped at `MAX_PAIN`. The cap keeps it a weak signal
that System 3 aggregates (it lowers viability): refusing what does not fit is the
regulation working, not an emergency for System 5 — tightening limits further in
answer to shedding would shed more.

Each tick's lag also goes to System 3's bound governor (`node.vsm.bounds`), when there
is one: it moves the upper bound of every limit (each a `s3_bound` event), and the
watch applies the current bound to every limit each tick (units started later too).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.vsm.events import EventSink, LimitBoundChanged
from vsmcp.node.vsm.kpis import percentile
from vsmcp.node.vsm.loop_service import LoopService

if TYPE_CHECKING:
    from vsmcp.node.vsm.bounds import BoundGovernor
    from vsmcp.node.vsm.concurrency import AdaptiveLimiter

log = logging.getLogger(__name__)

LOOP_NAME: Final = "overload-watch"
PAIN_SOURCE: Final = "overload"
DEFAULT_INTERVAL_S: Final = 1.0
WINDOW_TICKS: Final = 60
MAX_PAIN: Final = 0.6

PainFn = Callable[[str, float, str], None]
"""`pain(source, intensity, reason)`: raise an algedonic pain signal."""
CallCounts = Callable[[], tuple[int, int]]
"""The node's calls so far: (refused for load, the rest), both cumulative."""


class OverloadWatch(LoopService):
    """Sliding-window refusal counts (`calls`) and loop lag; pain when sustained; the
    bound of every limit of `limiters()`."""

    loop_name = LOOP_NAME

    def __init__(
        self,
        limiters: Callable[[], Sequence[AdaptiveLimiter]],
        pain: PainFn,
        loops: LoopSupervisor,
        *,
        calls: CallCounts,
        pain_after_s: float,
        interval_s: float = DEFAULT_INTERVAL_S,
        governor: BoundGovernor | None = None,
        events: EventSink | None = None,
    ) -> None:
        super().__init__(loops)
        self.governor = governor
        self._events = events
        self._limiters = limiters
        self._calls = calls
        self._last_calls = calls()
        self._pain = pain
        self.pain_after_s = pain_after_s
        self.interval_s = interval_s
        # (refused, admitted, lag_s) per tick, newest last.
        self._ticks: deque[tuple[int, int, float]] = deque(maxlen=WINDOW_TICKS)
        self._last: dict[str, int] = {}  # admissions so far, per limit
        self._streak_s = 0.0
        self._streak_refused = 0
        self._streak_admitted = 0
        self._since_pain_s = 0.0
        self.pains = 0

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.tick(max(0.0, loop.time() - due))

    def tick(self, lag_s: float) -> None:
        """One tick's accounting (the loop's body; tests call it directly)."""
        busy = False  # calls entered a limit since the last tick
        seen: dict[str, int] = {}
        for limiter in self._limiters():
            seen[limiter.name] = sum(limiter.admitted.values())
            busy = busy or seen[limiter.name] > self._last.get(limiter.name, 0)
        self._last = seen
        totals = self._calls()
        refused = max(0, totals[0] - self._last_calls[0])
        admitted = max(0, totals[1] - self._last_calls[1])
        self._last_calls = totals
        self._ticks.append((refused, admitted, lag_s))
        self._bound(lag_s, busy=busy or admitted > 0)
        self._since_pain_s += self.interval_s
        if refused == 0:
            self._streak_s = 0.0
            self._streak_refused = self._streak_admitted = 0
            return
        self._streak_s += self.interval_s
        self._streak_refused += refused
        self._streak_admitted += admitted
        sustained = self.pain_after_s > 0 and self._streak_s >= self.pain_after_s
        if sustained and self._since_pain_s >= self.pain_after_s:
            offered = self._streak_refused + self._streak_admitted
            share = self._streak_refused / offered
            self._pain(
                PAIN_SOURCE,
                round(min(MAX_PAIN, share), 3),
                f"shedding for {self._streak_s:.0f} s: {self._streak_refused} of {offered} "
                "calls refused for load",
            )
            self.pains += 1
            self._since_pain_s = 0.0

    def _bound(self, lag_s: float, *, busy: bool) -> None:
        governor = self.governor
        if governor is None:
            return
        change = governor.tick(lag_s, busy)
        for limiter in self._limiters():
            if limiter.bound != governor.share:
                limiter.set_bound(governor.share)
        if change is None:
            return
        log.info(
            "System 3: the concurrency limits' upper bound %s to %.0f %% (event loop lag %.0f ms)",
            change.direction,
            change.share * 100,
            change.lag_s * 1000,
        )
        if self._events is not None:
            self._events.publish(
                LimitBoundChanged(
                    ts=time.time(),
                    direction=change.direction,
                    share=change.share,
                    previous=change.previous,
                    lag_ms=round(change.lag_s * 1000, 3),
                )
            )

    def loop_lag_s(self, pct: float) -> float:
        return percentile(sorted(lag for _, _, lag in self._ticks), pct)

    def view(self) -> dict[str, Any]:
        window_s = len(self._ticks) * self.interval_s
        refused = sum(r for r, _, _ in self._ticks)
        admitted = sum(a for _, a, _ in self._ticks)
        return {
            "window_s": window_s,
            "shed": refused,
            "admitted": admitted,
            "shed_per_s": round(refused / window_s, 3) if window_s else 0.0,
            "shedding_for_s": self._streak_s,
            "pains": self.pains,
            "loop_lag_ms": {
                "p50": round(self.loop_lag_s(50) * 1000, 3),
                "p99": round(self.loop_lag_s(99) * 1000, 3),
            },
            "bound": None if self.governor is None else self.governor.view(),
        }
