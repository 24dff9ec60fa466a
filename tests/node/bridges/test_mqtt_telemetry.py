"""MQTT telemetry → `telemetry` events: devices and metrics from topics and payloads,
every kind of bad payload refused with its reason, and the events matched by the real
pattern engine ("temp > 90 and cpu > 80 on the same device within 10 s")."""

from __future__ import annotations

import tomllib

import pytest

from vsmcp.node.bridges.mqtt_telemetry import (
    MAX_READINGS_PER_MESSAGE,
    BadTelemetry,
    TelemetryDecoder,
    topic_names,
)
from vsmcp.node.vsm.events import NODE_CATALOG, Telemetry
from vsmcp.node.vsm.patterns.actions import Match
from vsmcp.node.vsm.patterns.compile import PatternEngine
from vsmcp.node.vsm.patterns.model import parse_patterns

FILTERS = ["vsmcp/telemetry/#", "site/+/sensors/+"]
MAX_BYTES = 16 * 1024


@pytest.fixture
def decoder() -> TelemetryDecoder:
    return TelemetryDecoder(FILTERS, max_bytes=MAX_BYTES)


def _readings(events: list[Telemetry]) -> list[tuple[str, str, float]]:
    return [(e.device, e.metric, e.value) for e in events]


@pytest.mark.parametrize(
    ("filter_", "topic", "names"),
    [
        ("vsmcp/telemetry/#", "vsmcp/telemetry/pump-7/temp", ("pump-7", "temp")),
        ("vsmcp/telemetry/#", "vsmcp/telemetry/pump-7/motor/rpm", ("pump-7", "motor/rpm")),
        ("vsmcp/telemetry/#", "vsmcp/telemetry/pump-7", ("pump-7", None)),
        ("vsmcp/telemetry/#", "vsmcp/telemetry", (None, None)),
        ("site/+/sensors/+", "site/a/sensors/temp", ("a", "temp")),
        ("site/+/sensors/+", "site/a/sensors", None),
        ("site/+/sensors/+", "site/a/sensors/temp/x", None),
        ("vsmcp/telemetry/#", "vsmcp/other/pump", None),
        ("a/b", "a/b", (None, None)),
    ],
)
def test_topic_names(filter_: str, topic: str, names: tuple[str | None, str | None] | None) -> None:
    assert topic_names(filter_.split("/"), topic) == names


def test_objects_and_bare_numbers_become_readings(decoder: TelemetryDecoder) -> None:
    events = decoder.decode("vsmcp/telemetry/pump-7", b'{"temp": 95.5, "cpu": 85}', 10.0)
    assert _readings(events) == [("pump-7", "temp", 95.5), ("pump-7", "cpu", 85.0)]
    assert all(e.ts == 10.0 and e.source == "mqtt" for e in events)
    assert _readings(decoder.decode("site/b/sensors/hum", b" 41 ", 1.0)) == [("b", "hum", 41.0)]
    # `device` in the object wins; `value` names the topic's metric; other keys skipped.
    payload = b'{"device": "fan-2", "value": 3, "ts": 5, "ok": true, "note": "x", "l": [1]}'
    events = decoder.decode("vsmcp/telemetry/gw/rpm", payload, 1.0)
    assert _readings(events) == [("fan-2", "rpm", 3.0)]
    events = decoder.decode("vsmcp/telemetry", b'{"device": "d", "t": -1e3}', 1.0)
    assert _readings(events) == [("d", "t", -1000.0)]


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("vsmcp/telemetry/d/m", b"x" * (MAX_BYTES + 1), "oversized"),
        ("vsmcp/telemetry/d/m", b"{nope", "not_json"),
        ("vsmcp/telemetry/d/m", b"", "not_json"),
        ("vsmcp/telemetry/d/m", b"[1]" * 3, "not_json"),
        ("vsmcp/telemetry/d/m", b"[1, 2]", "not_reading"),
        ("vsmcp/telemetry/d/m", b'"91"', "not_reading"),
        ("vsmcp/telemetry/d/m", b"true", "not_reading"),
        ("vsmcp/telemetry/d/m", b"null", "not_reading"),
        ("vsmcp/telemetry/d", b"91", "no_metric"),
        ("vsmcp/telemetry", b'{"temp": 1}', "no_device"),
        ("vsmcp/telemetry/d", b'{"ok": "yes"}', "no_reading"),
        ("vsmcp/telemetry/d/m", b"1e999", "not_json"),
        ("vsmcp/telemetry/d/m", b"1" + b"0" * 400, "not_finite"),
        ("vsmcp/telemetry/d", b'{"%s": 1}' % (b"m" * 129), "name"),
        ("vsmcp/telemetry/d/m", b"[" * 5000 + b"]" * 5000, "not_json"),
        ("elsewhere/d/m", b"1", "topic"),
    ],
)
def test_bad_payloads_are_refused_with_their_reason(
    decoder: TelemetryDecoder, topic: str, payload: bytes, reason: str
) -> None:
    with pytest.raises(BadTelemetry) as caught:
        decoder.decode(topic, payload, 1.0)
    assert caught.value.reason == reason


def test_too_many_readings_are_refused() -> None:
    decoder = TelemetryDecoder(FILTERS, max_bytes=64 * 1024)
    fields = ", ".join(f'"m{i}": {i}' for i in range(MAX_READINGS_PER_MESSAGE + 1))
    with pytest.raises(BadTelemetry) as caught:
        decoder.decode("vsmcp/telemetry/d", ("{" + fields + "}").encode(), 1.0)
    assert caught.value.reason == "too_many"
    fields = ", ".join(f'"m{i}": {i}' for i in range(MAX_READINGS_PER_MESSAGE))
    events = decoder.decode("vsmcp/telemetry/d", ("{" + fields + "}").encode(), 1.0)
    assert len(events) == MAX_READINGS_PER_MESSAGE


def test_the_pattern_engine_matches_edge_telemetry(decoder: TelemetryDecoder) -> None:
    patterns = parse_patterns(
        tomllib.loads(
            """
[[patterns]]
name = "hot-then-busy"
kind = "telemetry"
where = {all = [{field = "metric", op = "eq", value = "temp"},
                {field = "value", op = "gt", value = 90}]}
group_by = "device"
then = {kind = "telemetry", within_s = 10, where = {all = [
    {field = "metric", op = "eq", value = "cpu"}, {field = "value", op = "gt", value = 80}]}}
"""
        ),
        "edge.toml",
        NODE_CATALOG,
    )
    matches: list[Match] = []
    engine = PatternEngine(matches.append, NODE_CATALOG, patterns)
    stream = [
        ("vsmcp/telemetry/a", b'{"temp": 95, "cpu": 85}', 0.0),  # both at once: a match
        ("vsmcp/telemetry/b/temp", b"95", 0.0),
        ("vsmcp/telemetry/c/cpu", b"99", 5.0),  # another device: none
        ("vsmcp/telemetry/b/cpu", b"70", 6.0),  # not busy enough
        ("vsmcp/telemetry/b/cpu", b"81", 11.0),  # 11 s after the heat: too late
        ("vsmcp/telemetry/c/temp", b"91", 20.0),
        ("vsmcp/telemetry/c/cpu", b"81", 29.5),  # within 10 s: a match
    ]
    for topic, payload, ts in stream:
        engine.process_batch(decoder.decode(topic, payload, ts))
    assert [(m.group, m.event.ts) for m in matches] == [("a", 0.0), ("c", 29.5)]
