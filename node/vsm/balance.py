"""System 3's algedonic aggregate: a rolling pain/pleasure balance over a time window.

The balance is (Σ pleasure − Σ pain) / max(1, Σ pleasure + Σ pain) over the signals of
the last `window_s` seconds: in [−1, 1], 0 when nothing was felt. Dividing by at least 1
keeps a single weak signal weak (one pain of 0.2 gives −0.2, not −1), while many strong
ones saturate at the bound. Memory is bounded: at most `max_signals` are kept (the
oldest go first, counted in `evicted`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from vsmcp.node.vsm.algedonic import Signal

DEFAULT_WINDOW_S = 300.0
DEFAULT_MAX_SIGNALS = 10_000


class AlgedonicBalance:
    """Signals of the window and the balance they give. Time is passed in (`now`)."""

    def __init__(
        self, window_s: float = DEFAULT_WINDOW_S, max_signals: int = DEFAULT_MAX_SIGNALS
    ) -> None:
        if window_s <= 0 or max_signals < 1:
            raise ValueError("window_s must be > 0 and max_signals >= 1")
        self.window_s = window_s
        self._signals: deque[tuple[float, float]] = deque(maxlen=max_signals)
        self.evicted = 0
        self.counts = {"pain": 0, "pleasure": 0}

    def add(self, signals: Iterable[Signal]) -> None:
        for signal in signals:
            if len(self._signals) == self._signals.maxlen:
                self.evicted += 1
            self._signals.append((signal.ts, signal.signed))
            self.counts[signal.valence] += 1

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._signals and self._signals[0][0] <= horizon:
            self._signals.popleft()

    def sums(self, now: float) -> tuple[float, float]:
        """(Σ pain, Σ pleasure) intensities within the window."""
        self._expire(now)
        pain = sum(-v for _, v in self._signals if v < 0)
        pleasure = sum(v for _, v in self._signals if v > 0)
        return pain, pleasure

    def balance(self, now: float) -> float:
        pain, pleasure = self.sums(now)
        return (pleasure - pain) / max(1.0, pain + pleasure)

    def view(self, now: float) -> dict[str, float | int]:
        pain, pleasure = self.sums(now)
        return {
            "window_s": self.window_s,
            "balance": round((pleasure - pain) / max(1.0, pain + pleasure), 6),
            "pain": round(pain, 6),
            "pleasure": round(pleasure, 6),
            "signals_in_window": len(self._signals),
            "pain_total": self.counts["pain"],
            "pleasure_total": self.counts["pleasure"],
            "evicted": self.evicted,
        }
