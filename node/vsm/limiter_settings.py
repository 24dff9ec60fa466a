"""One adaptive concurrency limiter's bounds and constants (`[vsm.concurrency]`,
`ConcurrencyConfig.settings`). Apart from the limiter (`vsm.concurrency`): the config
loader needs these, an idle node without `[vsm.concurrency]` never runs a limiter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from vsmcp.node.vsm.priority import PRIORITY_CLASSES, Priority

# The queue an entry may always keep (calls beyond the no-load concurrency), whatever
# the tolerance.
MIN_QUEUE: Final = 1.0
DEFAULT_SHARES: Final[Mapping[Priority, float]] = {
    "low": 0.5,
    "normal": 0.8,
    "high": 0.95,
    "critical": 1.0,
}


@dataclass(frozen=True, slots=True)
class LimiterSettings:
    """Bounds and constants of one limiter (config `[vsm.concurrency]`)."""

    min_limit: int = 4
    max_limit: int = 256
    initial_limit: int = 32
    smoothing: float = 0.2
    tolerance: float = 1.5
    baseline_window_s: float = 30.0
    shares: Mapping[Priority, float] = field(default_factory=lambda: dict(DEFAULT_SHARES))

    def __post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError("need 1 <= min_limit <= initial_limit <= max_limit")
        if not 0 < self.smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")
        if not self.tolerance >= 1:
            raise ValueError("tolerance must be >= 1")
        if not self.baseline_window_s > 0:
            raise ValueError("baseline_window_s must be > 0")
        for name in PRIORITY_CLASSES:
            share = self.shares.get(name)
            if share is None or not 0 < share <= 1:
                raise ValueError(f"shares.{name} must be in (0, 1]")
