"""`[vsm.concurrency]`: the adaptive concurrency limits' bounds and constants (absent:
no adaptive limits, only the units' fixed `max_concurrency`/`max_queue`). Checked by
`settings`, which names the key of a bad value."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vsmcp.node.errors import ConfigError
from vsmcp.node.tools.config import doc
from vsmcp.node.vsm.concurrency import LimiterSettings
from vsmcp.node.vsm.priority import Priority

KEY = "vsm.concurrency"


class ConcurrencyConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    min_limit: Annotated[int, doc("the lowest concurrency limit an entry may fall to")] = 4
    max_limit: Annotated[
        int, doc("the highest concurrency limit an entry may grow to (a unit: its max_concurrency)")
    ] = 256
    initial_limit: Annotated[int, doc("each entry's limit before it has measured anything")] = 32
    smoothing: Annotated[
        float, doc("how far each window of calls moves the limit towards its target, in (0, 1]")
    ] = 0.2
    tolerance: Annotated[
        float, doc("latency may grow to this times the minimum RTT before the limit falls, >= 1")
    ] = 1.5
    baseline_window_s: Annotated[
        float, doc("how often the baseline (minimum RTT) may rise, by at most 10 %, s")
    ] = 30.0
    share_low: Annotated[float, doc("share of an entry's limit low-priority calls may use")] = 0.5
    share_normal: Annotated[float, doc("share of an entry's limit normal calls may use")] = 0.8
    share_high: Annotated[float, doc("share of an entry's limit high calls may use")] = 0.95
    pain_after_s: Annotated[
        float,
        doc("refusals in every second for this long raise algedonic pain (0: never), s"),
    ] = 5.0

    def settings(self) -> LimiterSettings:
        """The limiter settings; `ConfigError` naming the key of a bad value."""
        shares: dict[Priority, float] = {
            "low": self.share_low,
            "normal": self.share_normal,
            "high": self.share_high,
            "critical": 1.0,
        }
        checks = (
            ("min_limit", self.min_limit >= 1, "must be >= 1"),
            ("initial_limit", self.initial_limit >= self.min_limit, "must be >= min_limit"),
            ("max_limit", self.max_limit >= self.initial_limit, "must be >= initial_limit"),
            ("smoothing", 0 < self.smoothing <= 1, "must be in (0, 1]"),
            ("tolerance", self.tolerance >= 1, "must be >= 1"),
            ("baseline_window_s", self.baseline_window_s > 0, "must be > 0"),
            ("share_low", 0 < self.share_low <= self.share_normal, "must be in (0, share_normal]"),
            (
                "share_normal",
                0 < self.share_normal <= self.share_high,
                "must be in (0, share_high]",
            ),
            ("share_high", 0 < self.share_high <= 1, "must be in (0, 1]"),
            ("pain_after_s", self.pain_after_s >= 0, "must be >= 0"),
        )
        for name, ok, why in checks:
            if not ok:
                raise ConfigError(f"{KEY}.{name}", why)
        return LimiterSettings(
            min_limit=self.min_limit,
            max_limit=self.max_limit,
            initial_limit=self.initial_limit,
            smoothing=self.smoothing,
            tolerance=self.tolerance,
            baseline_window_s=self.baseline_window_s,
            shares=shares,
        )
