"""The algedonic channel: pain or pleasure from anywhere, routed by intensity.

A signal has a source (who raises it), a valence (`pain` or `pleasure`), an intensity in
[0, 1] and a short reason. Above the threshold (`vsm.algedonic_threshold`) it goes to
System 5 on its own lane; below, to System 3's lane, which S3 drains into its aggregate
at its own pace. The two lanes are separate bounded queues with separate consumers, so a
backlog of weak signals never delays a strong one: that is the point of the channel
(Beer's algedonic loop bypasses the filters between S1 and S5).

Raising never blocks: the signal is validated (`SignalError` naming the field), numbered,
published as an `AlgedonicSignal` event and appended to its lane; a full lane drops it
and counts the drop (`ChannelFull`, so the caller knows).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vsmcp.node.vsm.errors import VsmError
from vsmcp.node.vsm.events import AlgedonicSignal, EventSink

Valence = Literal["pain", "pleasure"]
LaneName = Literal["s5", "s3"]
VALENCES: tuple[Valence, ...] = ("pain", "pleasure")
MAX_REASON_CHARS = 500
MAX_SOURCE_CHARS = 128
DEFAULT_THRESHOLD = 0.7
DEFAULT_LANE_CAPACITY = 1024


class SignalError(VsmError):
    """A signal was refused: `field` names what is wrong (`valence`, `intensity`, ...)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ChannelFull(VsmError):
    """The lane the signal belongs to is full: it was dropped (and counted)."""

    def __init__(self, lane: LaneName) -> None:
        super().__init__(f"the algedonic {lane} lane is full; signal dropped")
        self.lane = lane


@dataclass(frozen=True, slots=True)
class Signal:
    """A validated signal. `seq` numbers signals in the order the channel took them."""

    seq: int
    ts: float
    source: str
    valence: Valence
    intensity: float
    reason: str

    @property
    def signed(self) -> float:
        """Intensity with its sign: pain negative, pleasure positive."""
        return -self.intensity if self.valence == "pain" else self.intensity

    def view(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "source": self.source,
            "valence": self.valence,
            "intensity": self.intensity,
            "reason": self.reason,
        }


def check_valence(value: object) -> Valence:
    if value == "pain":
        return "pain"
    if value == "pleasure":
        return "pleasure"
    raise SignalError("valence", "must be 'pain' or 'pleasure'")


def check_intensity(value: object) -> float:
    # bool is an int: `true` is not an intensity.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SignalError("intensity", "must be a number in [0, 1]")
    intensity = float(value)
    if not (math.isfinite(intensity) and 0.0 <= intensity <= 1.0):
        raise SignalError("intensity", f"{intensity} is not in [0, 1]")
    return intensity


def check_text(field: str, value: object, max_chars: int, *, required: bool) -> str:
    if not isinstance(value, str):
        raise SignalError(field, "must be a string")
    if required and not value.strip():
        raise SignalError(field, "must not be empty")
    if len(value) > max_chars:
        raise SignalError(field, f"longer than {max_chars} characters")
    return value


def parse_signal_fields(data: Mapping[str, Any], caller: str) -> tuple[str, Valence, float, str]:
    """(source, valence, intensity, reason) from a JSON object or tool arguments; unknown
    keys are refused (a typo must not be silently ignored).

    The source is the caller's origin (`http:<token>`, `stdio`, ...); a `source` the
    caller names goes after it (`http:ops/unit:db`). A caller never speaks as another
    source: System 5's rules select sources by glob (`pattern:*`) and take the source as
    the default target of a block or a quarantine, so a chosen source would let a caller
    trigger rules meant for patterns, or name who gets blocked."""
    unknown = sorted(set(data) - {"valence", "intensity", "reason", "source"})
    if unknown:
        raise SignalError(unknown[0], "unknown field")
    for field in ("valence", "intensity", "reason"):
        if field not in data:
            raise SignalError(field, "is required")
    source = caller
    if "source" in data:
        named = check_text("source", data["source"], MAX_SOURCE_CHARS, required=True)
        source = f"{caller}/{named}"
    return (
        check_text("source", source, MAX_SOURCE_CHARS, required=True),
        check_valence(data["valence"]),
        check_intensity(data["intensity"]),
        check_text("reason", data["reason"], MAX_REASON_CHARS, required=False),
    )


class Lane:
    """One bounded queue of signals and the event that wakes its consumer."""

    def __init__(self, name: LaneName, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("lane capacity must be >= 1")
        self.name: LaneName = name
        self.capacity = capacity
        self._items: deque[Signal] = deque()
        self.wake = asyncio.Event()
        self.accepted = 0
        self.dropped = 0
        self.taken = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, signal: Signal) -> bool:
        if len(self._items) >= self.capacity:
            self.dropped += 1
            return False
        self._items.append(signal)
        self.accepted += 1
        self.wake.set()
        return True

    def take_all(self) -> list[Signal]:
        """Everything queued, oldest first; the lane is empty afterwards."""
        items = list(self._items)
        self._items.clear()
        self.wake.clear()
        self.taken += len(items)
        return items

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self._items),
            "capacity": self.capacity,
            "accepted": self.accepted,
            "dropped": self.dropped,
            "taken": self.taken,
        }


class AlgedonicChannel:
    """Validates, numbers, publishes and routes signals to the S5 or S3 lane.

    The consumers (System 5 and System 3) take from `s5` and `s3`; they own their tasks.
    """

    def __init__(
        self,
        events: EventSink,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        capacity: int = DEFAULT_LANE_CAPACITY,
        clock: Callable[[], float],
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("threshold must be in [0, 1]")
        self.threshold = threshold
        self._events = events
        self._clock = clock
        self.s5 = Lane("s5", capacity)
        self.s3 = Lane("s3", capacity)
        self._seq = 0

    def lane_for(self, intensity: float) -> Lane:
        """Above the threshold: System 5's lane; at or below: System 3's."""
        return self.s5 if intensity > self.threshold else self.s3

    def raise_signal(self, source: str, valence: str, intensity: float, reason: str = "") -> Signal:
        """Any component's way in. Raises `SignalError` for a bad field and `ChannelFull`
        when the signal's lane is full (the drop is counted)."""
        signal = Signal(
            seq=self._seq + 1,
            ts=self._clock(),
            source=check_text("source", source, MAX_SOURCE_CHARS, required=True),
            valence=check_valence(valence),
            intensity=check_intensity(intensity),
            reason=check_text("reason", reason, MAX_REASON_CHARS, required=False),
        )
        lane = self.lane_for(signal.intensity)
        if not lane.put(signal):
            raise ChannelFull(lane.name)
        self._seq = signal.seq
        self._events.publish(
            AlgedonicSignal(
                ts=signal.ts,
                source=signal.source,
                valence=signal.valence,
                intensity=signal.intensity,
                reason=signal.reason,
            )
        )
        return signal

    def raise_from(self, data: Mapping[str, Any], caller: str) -> Signal:
        """A signal a caller raises, from a JSON object or tool arguments; its source is
        the caller's origin (see `parse_signal_fields`)."""
        return self.raise_signal(*parse_signal_fields(data, caller))

    def stats(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "signals": self._seq,
            "lanes": {"s5": self.s5.stats(), "s3": self.s3.stats()},
        }
