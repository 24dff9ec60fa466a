"""System 3 moves the adaptive limits' upper bound from its KPIs (docs/regulation.md).

Each adaptive limit (`node.vsm.concurrency`) follows the latency of its own calls. What
it cannot see is the node as a whole: when the event loop runs late, every call and
every heartbeat waits, whichever entry admitted the work. System 3 reads that KPI (the
event loop's lag, measured each second by the overload watch) and moves the upper
bound of every limit of the node — the `mcp` and `serve` entries and each unit — as a
share of the configured `max_limit`, never below `min_share` of it (nor below
`min_limit`):

- **lower** (× `step_down`) once the lag was at or above `lag_high_s` for
  `breach_ticks` ticks in a row while calls were being admitted (a late loop with no
  calls running is the machine's doing, not ours);
- **raise** (+ `step_up`, up to 1) once the lag was at or below `lag_low_s`, or below
  `lag_high_s` with no call admitted, for `healthy_ticks` ticks in a row (lag in the dead
  band with no calls of ours is some other process's: it must not hold the bound down
  once our load is gone);
- in between (the dead band, while calls are admitted) hold.

Damping (System 2's anti-oscillation): the two thresholds are far apart (hysteresis),
each change needs a fresh run of ticks (the counters restart after a change, so at most
one step per `breach_ticks` down and per `healthy_ticks` up), and the steps are
asymmetric (multiplicative down, additive up, as TCP's AIMD): a step of load lowers the
bound monotonically and it stays put once the lag is back in the band; it rises again
only after the load has been gone for a while (tests/node/vsm/test_bounds.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

LOWERED: Final = "lowered"
RAISED: Final = "raised"
Direction = Literal["lowered", "raised"]


@dataclass(frozen=True, slots=True)
class BoundSettings:
    """When and how far System 3 moves the bound (config `[vsm.concurrency]` `s3_*`)."""

    lag_high_s: float = 0.25
    lag_low_s: float = 0.05
    breach_ticks: int = 3
    healthy_ticks: int = 10
    step_down: float = 0.75
    step_up: float = 0.1
    min_share: float = 0.25

    def __post_init__(self) -> None:
        if not 0 <= self.lag_low_s < self.lag_high_s:
            raise ValueError("need 0 <= lag_low_s < lag_high_s")
        if self.breach_ticks < 1 or self.healthy_ticks < 1:
            raise ValueError("breach_ticks and healthy_ticks must be >= 1")
        if not 0 < self.step_down < 1 or not 0 < self.step_up <= 1:
            raise ValueError("step_down must be in (0, 1), step_up in (0, 1]")
        if not 0 < self.min_share <= 1:
            raise ValueError("min_share must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class BoundChange:
    """One move of the bound: its direction, the new share, the lag that caused it."""

    direction: Direction
    share: float
    previous: float
    lag_s: float


class BoundGovernor:
    """The bound as a share of the configured `max_limit` (1.0: as configured), fed one
    tick at a time."""

    __slots__ = ("_breach", "_healthy", "changes", "settings", "share")

    def __init__(self, settings: BoundSettings) -> None:
        self.settings = settings
        self.share = 1.0
        self._breach = 0
        self._healthy = 0
        self.changes = 0

    def tick(self, lag_s: float, busy: bool) -> BoundChange | None:
        """One tick's lag (`busy`: calls were admitted in it); the change, if any."""
        s = self.settings
        if lag_s >= s.lag_high_s and busy:
            self._breach += 1
            self._healthy = 0
        elif lag_s <= s.lag_low_s or (not busy and lag_s < s.lag_high_s):
            self._healthy += 1
            self._breach = 0
        else:
            self._breach = self._healthy = 0
        if self._breach >= s.breach_ticks and self.share > s.min_share:
            return self._move(LOWERED, max(s.min_share, self.share * s.step_down), lag_s)
        if self._healthy >= s.healthy_ticks and self.share < 1.0:
            return self._move(RAISED, min(1.0, self.share + s.step_up), lag_s)
        return None

    def _move(self, direction: Direction, share: float, lag_s: float) -> BoundChange:
        change = BoundChange(direction, round(share, 4), self.share, lag_s)
        self.share = change.share
        self._breach = self._healthy = 0
        self.changes += 1
        return change

    def view(self) -> dict[str, object]:
        s = self.settings
        return {
            "share": self.share,
            "changes": self.changes,
            "lag_high_ms": s.lag_high_s * 1000,
            "lag_low_ms": s.lag_low_s * 1000,
            "min_share": s.min_share,
        }
