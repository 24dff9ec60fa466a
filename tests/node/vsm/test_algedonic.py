"""The algedonic channel: validation naming the field, lanes by threshold, bounds."""

from __future__ import annotations

from typing import Any

import pytest

from vsmcp.node.vsm.algedonic import (
    MAX_REASON_CHARS,
    AlgedonicChannel,
    ChannelFull,
    SignalError,
    parse_signal_fields,
)
from vsmcp.node.vsm.events import AlgedonicSignal, Event
from vsmcp.node.vsm.stream import EventStream, Subscriber


def channel(threshold: float = 0.7, capacity: int = 8) -> tuple[AlgedonicChannel, Subscriber]:
    stream = EventStream()
    seen = stream.subscribe("seen", lambda batch: None)  # never started: its buffer is read
    return AlgedonicChannel(stream, threshold=threshold, capacity=capacity, clock=lambda: 5.0), seen


def test_above_threshold_goes_to_s5_at_or_below_to_s3() -> None:
    ch, _ = channel(threshold=0.7)
    assert ch.raise_signal("x", "pain", 0.71, "hot").seq == 1
    ch.raise_signal("x", "pain", 0.7, "warm")  # at the threshold: System 3
    ch.raise_signal("x", "pleasure", 0.0, "")
    ch.raise_signal("x", "pleasure", 1.0, "great")
    assert [s.intensity for s in ch.s5.take_all()] == [0.71, 1.0]
    assert [s.seq for s in ch.s3.take_all()] == [2, 3]
    assert ch.stats()["signals"] == 4


def test_every_signal_is_published_as_an_event() -> None:
    ch, seen = channel()
    ch.raise_signal("pattern:p", "pain", 0.9, "storm")
    ch.raise_signal("http:ops", "pleasure", 0.1)
    events: list[Event] = list(seen.buffer)
    assert events == [
        AlgedonicSignal(ts=5.0, source="pattern:p", valence="pain", intensity=0.9, reason="storm"),
        AlgedonicSignal(ts=5.0, source="http:ops", valence="pleasure", intensity=0.1, reason=""),
    ]


def test_lanes_are_bounded_and_drops_counted_per_lane() -> None:
    ch, seen = channel(capacity=2)
    for _ in range(2):
        ch.raise_signal("x", "pain", 0.1)
    with pytest.raises(ChannelFull) as full:
        ch.raise_signal("x", "pain", 0.1)
    assert full.value.lane == "s3"
    # The strong lane is separate: a full S3 lane never blocks S5.
    ch.raise_signal("x", "pain", 0.9)
    assert ch.s3.stats() == {
        "queued": 2,
        "capacity": 2,
        "accepted": 2,
        "dropped": 1,
        "taken": 0,
    }
    assert ch.s5.stats()["accepted"] == 1
    assert len(seen.buffer) == 3  # a dropped signal is not published
    assert ch.raise_signal("x", "pain", 0.9).seq == 4  # nor numbered


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"valence": "meh", "intensity": 0.5, "reason": ""}, "valence"),
        ({"valence": "pain", "intensity": -0.1, "reason": ""}, "intensity"),
        ({"valence": "pain", "intensity": 1.01, "reason": ""}, "intensity"),
        ({"valence": "pain", "intensity": float("nan"), "reason": ""}, "intensity"),
        ({"valence": "pain", "intensity": True, "reason": ""}, "intensity"),
        ({"valence": "pain", "intensity": "0.5", "reason": ""}, "intensity"),
        ({"valence": "pain", "intensity": 0.5, "reason": "x" * (MAX_REASON_CHARS + 1)}, "reason"),
        ({"valence": "pain", "intensity": 0.5, "reason": 3}, "reason"),
        ({"valence": "pain", "intensity": 0.5}, "reason"),
        ({"intensity": 0.5, "reason": ""}, "valence"),
        ({"valence": "pain", "intensity": 0.5, "reason": "", "source": ""}, "source"),
        ({"valence": "pain", "intensity": 0.5, "reason": "", "source": "s" * 129}, "source"),
        ({"valence": "pain", "intensity": 0.5, "reason": "", "extra": 1}, "extra"),
    ],
)
def test_bad_fields_are_refused_naming_the_field(fields: dict[str, Any], field: str) -> None:
    ch, seen = channel()
    with pytest.raises(SignalError) as bad:
        ch.raise_from(fields, caller="http:ops")
    assert bad.value.field == field
    assert str(bad.value).startswith(f"{field}: ")
    assert not seen.buffer and ch.stats()["signals"] == 0  # nothing half-taken


def test_the_source_is_the_callers_and_a_named_one_goes_after_it() -> None:
    fields = {"valence": "pain", "intensity": 0.5, "reason": "r"}
    assert parse_signal_fields(fields, "http:ops") == ("http:ops", "pain", 0.5, "r")
    named = {**fields, "source": "unit:db"}
    assert parse_signal_fields(named, "http:ops")[0] == "http:ops/unit:db"
    # A caller cannot speak as a pattern (rules select `pattern:*`) or as another caller.
    spoofed = {**fields, "source": "pattern:immune"}
    assert not parse_signal_fields(spoofed, "http:ops")[0].startswith("pattern:")
    too_long = {**fields, "source": "s" * 125}  # fits alone, not after the caller's origin
    with pytest.raises(SignalError) as bad:
        parse_signal_fields(too_long, "http:ops")
    assert bad.value.field == "source"
    assert parse_signal_fields({**fields, "intensity": 1}, "x")[2] == 1.0


def test_threshold_must_be_in_range() -> None:
    with pytest.raises(ValueError):
        channel(threshold=1.5)
