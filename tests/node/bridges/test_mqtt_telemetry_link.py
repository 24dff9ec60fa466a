"""The bridge's side of the telemetry connection, with the node's real event stream:
a received chunk's messages become events, an oversized one is counted as bad, reading
pauses (counted once per pause) while the stream has too little room for telemetry,
and the bridge is not `connected` while its telemetry connection is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from tests.skips import require_module
from vsmcp.node.bridges.model import BridgeContext
from vsmcp.node.metrics import NodeMetrics
from vsmcp.node.vsm.events import Event, Telemetry
from vsmcp.node.vsm.stream import EventStream


def _bridge(tmp_path: Path, events: EventStream) -> Any:
    require_module("aiomqtt")  # the bridge's extra (`vsmcp[mqtt]`)
    from vsmcp.node.bridges.mqtt import MqttBridge
    from vsmcp.node.bridges.mqtt_config import MqttSection

    context = BridgeContext(
        node_id="n1",
        node_name="unit",
        data_dir=tmp_path,
        zones=("public", "ops"),
        events=events,
        loops=None,  # type: ignore[arg-type]  # not started here
        metrics=NodeMetrics(),
        tools=None,
        state=None,
        store=None,
        audit_log=None,
        audit=lambda kind, data: None,
        pain=lambda source, intensity, reason: None,
    )
    section = msgspec.convert({"max_telemetry_bytes": 64}, MqttSection)
    return MqttBridge(section, context)


async def test_chunks_become_events_and_reading_pauses_while_the_stream_is_full(
    tmp_path: Path,
) -> None:
    from vsmcp.node.bridges.mqtt import READ_ROOM
    from vsmcp.node.bridges.mqtt_wire import Oversized, Publish

    events = EventStream()
    seen: list[Event] = []
    # Not started: what is published waits in the buffer, so its room is exact.
    events.subscribe("engine", seen.extend, capacity=READ_ROOM + 4, kinds=[Telemetry])
    bridge = _bridge(tmp_path, events)
    chunk = [
        Publish("vsmcp/telemetry/pump-1", b'{"temp": 95, "cpu": 85}', 1, 7, False, False),
        Publish("vsmcp/telemetry/pump-2/temp", b"91", 0, 0, False, False),
        Publish("vsmcp/telemetry/pump-3", b"not json", 1, 8, False, False),
    ]
    bridge._on_publishes(chunk)
    bridge._on_oversized([Oversized("vsmcp/telemetry/pump-4", 1000, 1, 9)])
    (engine,) = events.subscribers()
    readings = [e for e in engine.buffer if isinstance(e, Telemetry)]
    assert len(readings) == len(engine.buffer)
    assert [(e.device, e.metric, e.value) for e in readings] == [
        ("pump-1", "temp", 95.0),
        ("pump-1", "cpu", 85.0),
        ("pump-2", "temp", 91.0),
    ]
    counters = bridge.status().counters
    assert counters["telemetry_messages"] == 2
    assert counters["telemetry_bad"] == 2
    assert counters["telemetry_not_json"] == counters["telemetry_oversized"] == 1
    # Room for READ_ROOM + 1 events: read on. One more event: pause, counted once.
    assert bridge._room_for_telemetry() is True
    bridge._on_publishes([Publish("vsmcp/telemetry/pump-5/cpu", b"1", 0, 0, False, False)] * 2)
    assert events.room(Telemetry) == READ_ROOM - 1
    assert bridge._room_for_telemetry() is False
    assert bridge._room_for_telemetry() is False
    assert bridge.status().counters["telemetry_pauses"] == 1
    engine.buffer.clear()  # the engine caught up
    assert bridge._room_for_telemetry() is True


async def test_a_subscriber_with_a_small_buffer_slows_the_intake_but_never_stops_it(
    tmp_path: Path,
) -> None:
    from vsmcp.node.bridges.mqtt_wire import Publish

    events = EventStream()
    events.subscribe("small", lambda batch: None, capacity=100, kinds=[Telemetry])
    bridge = _bridge(tmp_path, events)
    assert bridge._room_for_telemetry() is True  # 100 free: more than half of it
    bridge._on_publishes([Publish("vsmcp/telemetry/pump-1/cpu", b"1", 0, 0, False, False)] * 51)
    assert bridge._room_for_telemetry() is False  # 49 free: under half
    (small,) = events.subscribers()
    small.buffer.clear()
    assert bridge._room_for_telemetry() is True


def test_the_bridge_is_connected_only_with_its_telemetry_connection(tmp_path: Path) -> None:
    bridge = _bridge(tmp_path, EventStream())
    bridge._status.state = "connected"  # the main connection is up
    assert bridge.status().state == "connecting"
    bridge._telemetry_connected()
    assert bridge.status().state == "connected"
    bridge._telemetry_down(bridge._telemetry_link, "lost")
    assert bridge.status().state == "down"
    assert bridge.status().counters["telemetry_disconnects"] == 1
