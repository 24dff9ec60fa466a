"""MQTT telemetry → `Telemetry` events for the node's stream (and so the pattern engine).

Which device and metric a message is about comes from its topic: of the telemetry
filter it matched, the first level a wildcard (`+` or `#`) matched names the device and
the rest (joined by `/`) the metric: `vsmcp/telemetry/#` reads
`vsmcp/telemetry/pump-7/temp` as device `pump-7`, metric `temp`.

Payloads:
- a bare JSON number (`91.5`): one reading of the topic's device and metric (both needed);
- a JSON object: one reading per number in it, the key naming the metric (`value` names
  the topic's metric when the topic has one); `device`, when a string, names the device
  (else the topic's). Other keys (strings, lists, booleans, `ts`) are not readings and
  are skipped; an object without any number is refused.

Everything else is refused with `BadTelemetry(reason)`: over the size cap, not JSON, not
a number or an object, no device, a non-finite number, too many readings, a name too long.
The event's time is when the node received it (device clocks are not trusted to keep
the pattern engine's windows in order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

import msgspec

from vsmcp.node.vsm.events import Telemetry

MAX_READINGS_PER_MESSAGE: Final = 64
MAX_NAME_CHARS: Final = 128
# Topics remembered with their device and metric; beyond it the memory starts afresh.
MAX_CACHED_TOPICS: Final = 4096
SOURCE: Final = "mqtt"
NOT_READINGS: Final = frozenset({"device", "ts"})

_decode = msgspec.json.Decoder().decode

TopicNames = tuple[str | None, str | None]  # (device, metric) named by a topic


class BadTelemetry(ValueError):
    """A telemetry message that gives no event; `reason` is a short counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def topic_names(filter_levels: Sequence[str], topic: str) -> TopicNames | None:
    """(device, metric) of `topic` under a filter (split into levels); None: no match."""
    levels = topic.split("/")
    tail: list[str] = []
    for i, want in enumerate(filter_levels):
        if want == "#":
            tail.extend(levels[i:])
            break
        if i >= len(levels):
            return None
        if want == "+":
            tail.append(levels[i])
        elif want != levels[i]:
            return None
    else:
        if len(levels) != len(filter_levels):
            return None
    device = tail[0] if tail and tail[0] else None
    metric = "/".join(tail[1:]) or None
    return device, metric


class TelemetryDecoder:
    """Reads telemetry messages of the configured filters into events."""

    def __init__(self, filters: Sequence[str], max_bytes: int) -> None:
        self._filters = [f.split("/") for f in filters]
        self._max_bytes = max_bytes
        self._topics: dict[str, TopicNames | None] = {}

    def matches(self, topic: str) -> bool:
        return self._names(topic) is not None

    def _names(self, topic: str) -> TopicNames | None:
        try:
            return self._topics[topic]
        except KeyError:
            pass
        names = None
        for levels in self._filters:
            names = topic_names(levels, topic)
            if names is not None:
                break
        if len(self._topics) >= MAX_CACHED_TOPICS:
            self._topics.clear()
        self._topics[topic] = names
        return names

    def decode(self, topic: str, payload: bytes, ts: float) -> list[Telemetry]:
        """The events of one message; `BadTelemetry` when it gives none."""
        if len(payload) > self._max_bytes:
            raise BadTelemetry("oversized", f"{len(payload)} bytes (max {self._max_bytes})")
        names = self._names(topic)
        if names is None:
            raise BadTelemetry("topic", f"{topic[:MAX_NAME_CHARS]!r} is no telemetry topic")
        device, metric = names
        try:
            value = _decode(payload)
        except (msgspec.DecodeError, RecursionError):  # 1e999 is a DecodeError too
            raise BadTelemetry("not_json", "the payload is not JSON") from None
        if isinstance(value, dict):
            return _readings(value, device, metric, ts)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if device is None or metric is None:
                raise BadTelemetry(
                    "no_metric", "a bare number needs a topic naming device and metric"
                )
            return [_event(device, metric, value, ts)]
        raise BadTelemetry("not_reading", "expected a JSON number or object")


def _readings(
    obj: dict[str, object], device: str | None, metric: str | None, ts: float
) -> list[Telemetry]:
    named = obj.get("device")
    if isinstance(named, str) and named:
        device = named
    if device is None:
        raise BadTelemetry("no_device", "neither the topic nor a 'device' key names the device")
    out: list[Telemetry] = []
    for key, value in obj.items():
        if key in NOT_READINGS or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if len(out) >= MAX_READINGS_PER_MESSAGE:
            raise BadTelemetry("too_many", f"over {MAX_READINGS_PER_MESSAGE} readings")
        name = metric if key == "value" and metric is not None else key
        out.append(_event(device, name, value, ts))
    if not out:
        raise BadTelemetry("no_reading", "the object holds no number")
    return out


def _event(device: str, metric: str, value: float, ts: float) -> Telemetry:
    if len(device) > MAX_NAME_CHARS or len(metric) > MAX_NAME_CHARS or not metric:
        raise BadTelemetry("name", f"device and metric names are 1..{MAX_NAME_CHARS} chars")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond any float
        value = math.inf
    if not math.isfinite(value):
        raise BadTelemetry("not_finite", "readings must be finite numbers")
    return Telemetry(ts=ts, device=device, metric=metric, value=value, source=SOURCE)
