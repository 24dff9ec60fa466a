"""Window state of the pattern engine: counts within a sliding window and "A followed
by B within T", per group, bounded.

Time is the events' own `ts`. Within a group, time never runs backwards: an event older
than the newest timestamp still held for its group counts at that newest time (so a
group's timestamps stay sorted and expire from the front). Each pattern holds at most
`max_groups` groups; a new group beyond that evicts the group least recently touched,
and `evictions` counts it. The reference interpreter (`reference.py`) states the same
rules in the plainest code; the property tests hold these classes to it.
"""

from __future__ import annotations

from collections import deque

from vsmcp.node.vsm.events import Scalar


class CountWindowState:
    """Groups of timestamps for a count window, in recency order. The update is written
    inline into each kind's generated matcher (`compile._count_window_lines`): add the
    event's time (clamped as above), drop times <= t - within_s, and when `count` are
    held, fire and empty the group."""

    __slots__ = ("count", "evictions", "groups", "max_groups", "within_s")

    def __init__(self, count: int, within_s: float, max_groups: int) -> None:
        self.count = count
        self.within_s = within_s
        self.max_groups = max_groups
        self.groups: dict[Scalar, deque[float]] = {}
        self.evictions = 0

    def held(self) -> int:
        """Timestamps held over all groups (for bounds checks and metrics)."""
        return sum(len(t) for t in self.groups.values())


class SequenceState:
    """The latest A per group. `first` records an A; `then` returns 2 when a B completes
    "A followed by B within T" (consuming the A), else 0 (an expired A is dropped)."""

    __slots__ = ("evictions", "groups", "max_groups", "within_s")

    def __init__(self, within_s: float, max_groups: int) -> None:
        self.within_s = within_s
        self.max_groups = max_groups
        self.groups: dict[Scalar, float] = {}
        self.evictions = 0

    def first(self, ts: float, key: Scalar) -> None:
        groups = self.groups
        held = groups.pop(key, None)
        if held is None:
            if len(groups) >= self.max_groups:
                del groups[next(iter(groups))]
                self.evictions += 1
        elif ts < held:
            ts = held
        groups[key] = ts

    def then(self, ts: float, key: Scalar) -> int:
        held = self.groups.pop(key, None)
        if held is None:
            return 0
        return 2 if ts - held <= self.within_s else 0

    def held(self) -> int:
        return len(self.groups)


WindowState = CountWindowState | SequenceState
