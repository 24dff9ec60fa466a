"""`[vsm.concurrency]`: the adaptive concurrency limits' bounds and constants (absent:
no adaptive limits, only the units' fixed `max_concurrency`/`max_queue`). Checked by
`settings`, which names the key of a bad value."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated

import msgspec

from vsmcp.node.errors import ConfigError
from vsmcp.node.tools.config import doc
from vsmcp.node.vsm.limiter_settings import MIN_QUEUE, LimiterSettings
from vsmcp.node.vsm.priority import Priority

if TYPE_CHECKING:
    from vsmcp.node.vsm.bounds import BoundSettings

KEY = "vsm.concurrency"
# Also the overload watch's without `[vsm.concurrency]` (a unit's full queue, System 5's
# shedding and rate limits refuse for load without it).
DEFAULT_PAIN_AFTER_S = 5.0


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
        float,
        doc(
            f"latency may grow to this times the minimum RTT (and at least {MIN_QUEUE:g} "
            "calls may wait) before the limit falls, >= 1"
        ),
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
    ] = DEFAULT_PAIN_AFTER_S
    s3_lag_high_ms: Annotated[
        float,
        doc(
            "System 3 lowers every limit's upper bound when the event loop lags this much "
            "for s3_lower_after_s while calls run (0: System 3 leaves the bounds alone), ms"
        ),
    ] = 250.0
    s3_lag_low_ms: Annotated[
        float,
        doc("...and raises it back once the lag stays at most this for s3_raise_after_s, ms"),
    ] = 50.0
    s3_lower_after_s: Annotated[
        float, doc("how long the lag must stay high before each step down, s")
    ] = 3.0
    s3_raise_after_s: Annotated[
        float, doc("how long the lag must stay low before each step up, s")
    ] = 10.0
    s3_step_down: Annotated[
        float, doc("each step down multiplies the bound by this, in (0, 1)")
    ] = 0.75
    s3_step_up: Annotated[
        float, doc("each step up adds this share of the configured max_limit, in (0, 1]")
    ] = 0.1
    s3_min_share: Annotated[
        float,
        doc("System 3 never lowers a bound below this share of the configured max_limit"),
    ] = 0.25

    def bound_settings(self, tick_s: float) -> BoundSettings | None:
        """System 3's bound governor's settings (None: off) for ticks of `tick_s`;
        `ConfigError` naming the key of a bad value."""
        checks = (
            ("s3_lag_high_ms", self.s3_lag_high_ms >= 0, "must be >= 0"),
            (
                "s3_lag_low_ms",
                0 <= self.s3_lag_low_ms < self.s3_lag_high_ms or self.s3_lag_high_ms == 0,
                "must be in [0, s3_lag_high_ms)",
            ),
            ("s3_lower_after_s", self.s3_lower_after_s > 0, "must be > 0"),
            ("s3_raise_after_s", self.s3_raise_after_s > 0, "must be > 0"),
            ("s3_step_down", 0 < self.s3_step_down < 1, "must be in (0, 1)"),
            ("s3_step_up", 0 < self.s3_step_up <= 1, "must be in (0, 1]"),
            ("s3_min_share", 0 < self.s3_min_share <= 1, "must be in (0, 1]"),
        )
        _check(checks)
        if self.s3_lag_high_ms == 0:
            return None
        from vsmcp.node.vsm.bounds import BoundSettings  # System 3's bounds are on

        return BoundSettings(
            lag_high_s=self.s3_lag_high_ms / 1000,
            lag_low_s=self.s3_lag_low_ms / 1000,
            breach_ticks=max(1, math.ceil(self.s3_lower_after_s / tick_s)),
            healthy_ticks=max(1, math.ceil(self.s3_raise_after_s / tick_s)),
            step_down=self.s3_step_down,
            step_up=self.s3_step_up,
            min_share=self.s3_min_share,
        )

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
        _check(checks)
        return LimiterSettings(
            min_limit=self.min_limit,
            max_limit=self.max_limit,
            initial_limit=self.initial_limit,
            smoothing=self.smoothing,
            tolerance=self.tolerance,
            baseline_window_s=self.baseline_window_s,
            shares=shares,
        )


def _check(checks: tuple[tuple[str, bool, str], ...]) -> None:
    for name, ok, why in checks:
        if not ok:
            raise ConfigError(f"{KEY}.{name}", why)
