"""The MQTT 3.1.1 codec of the telemetry subscriber against paho's own encoder (not our
code): what paho sends, our reader reads back the same however the bytes are split;
what we send is byte for byte what paho sends; oversized payloads are skipped, not
buffered; malformed input is a `ProtocolError`."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.skips import require_module
from vsmcp.node.bridges import mqtt_wire as wire

# Topic names: UTF-8 without NUL or wildcards (what a broker forwards).
topics = st.text(
    st.characters(codec="utf-8", exclude_characters="\0+#"),
    min_size=1,
    max_size=40,
)
publishes = st.tuples(
    topics,
    st.binary(max_size=300),
    st.sampled_from([0, 1]),
    st.integers(1, 0xFFFF),
    st.booleans(),
    st.booleans(),
)


class _NoSocket:
    def close(self) -> None:
        pass


def _paho(**kwargs: Any) -> tuple[Any, list[bytes]]:
    """A paho client (MQTT 3.1.1) whose packets are captured instead of sent."""
    client_mod = require_module("paho.mqtt.client")
    client = client_mod.Client(
        client_mod.CallbackAPIVersion.VERSION2, protocol=client_mod.MQTTv311, **kwargs
    )
    sent: list[bytes] = []

    def capture(command: int, packet: bytes, mid: int, qos: int, info: object = None) -> int:
        sent.append(bytes(packet))
        return 0

    client._packet_queue = capture
    client._sock = _NoSocket()  # paho only checks there is one before encoding
    return client, sent


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=150, deadline=None)
@given(st.lists(publishes, min_size=1, max_size=20), st.lists(st.integers(0, 10**6)))
def test_paho_publishes_are_read_back_however_the_bytes_arrive(
    messages: list[tuple[str, bytes, int, int, bool, bool]], cuts: list[int]
) -> None:
    client, sent = _paho()
    for topic, payload, qos, mid, retain, dup in messages:
        client._send_publish(mid, topic.encode(), payload, qos, retain, dup)
    reader = wire.PacketReader(max_payload=300)
    got: list[wire.Publish] = []
    for chunk in _split(b"".join(sent), cuts):
        publishes_, oversized, controls = reader.feed(chunk)
        assert (oversized, controls) == ([], [])
        got += publishes_
    assert reader.buffered == 0
    expected = [
        wire.Publish(topic, payload, qos, mid if qos else 0, retain, dup)
        for topic, payload, qos, mid, retain, dup in messages
    ]
    assert got == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(publishes, st.booleans()), min_size=1, max_size=12),
    st.lists(st.integers(0, 10**6)),
)
def test_oversized_payloads_are_reported_and_skipped_not_buffered(
    messages: list[tuple[tuple[str, bytes, int, int, bool, bool], bool]], cuts: list[int]
) -> None:
    cap = 50
    client, sent = _paho()
    for (topic, payload, qos, mid, retain, dup), big in messages:
        body = payload + b"x" * (cap + 1) if big else payload[:cap]
        client._send_publish(mid, topic.encode(), body, qos, retain, dup)
    reader = wire.PacketReader(max_payload=cap)
    got: list[wire.Publish] = []
    skipped: list[wire.Oversized] = []
    for chunk in _split(b"".join(sent), cuts):
        publishes_, oversized, _ = reader.feed(chunk)
        got += publishes_
        skipped += oversized
        # Never more than one header plus one allowed payload waits in the buffer.
        assert reader.buffered <= 2 + 4 + 2 + 4 * 40 + 2 + cap
    assert [p.topic for p in got] == [m[0][0] for m in messages if not m[1]]
    assert [(o.topic, o.qos) for o in skipped] == [(m[0][0], m[0][2]) for m in messages if m[1]]
    assert all(o.size > cap for o in skipped)
    assert [o.packet_id for o in skipped] == [m[0][3] if m[0][2] else 0 for m in messages if m[1]]


@settings(max_examples=100, deadline=None)
@given(
    client_id=st.text(min_size=1, max_size=30),  # paho makes one up for ""
    keepalive=st.integers(0, 0xFFFF),
    username=st.none() | st.text(max_size=20),
    password=st.none() | st.text(max_size=20),
    clean=st.booleans(),
)
def test_connect_is_what_paho_sends(
    client_id: str, keepalive: int, username: str | None, password: str | None, clean: bool
) -> None:
    client, sent = _paho(client_id=client_id, clean_session=clean)
    if username is not None:
        client.username_pw_set(username, password)
    client._send_connect(keepalive)
    ours = wire.connect(
        client_id,
        keepalive,
        username=username,
        password=password if username is not None else None,
        clean_session=clean,
    )
    assert ours == sent[0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(topics, st.sampled_from([0, 1, 2])), min_size=1, max_size=8))
def test_subscribe_and_acks_are_what_paho_sends(filters: list[tuple[str, int]]) -> None:
    client, sent = _paho()
    client._send_subscribe(False, [(f.encode(), q) for f, q in filters])
    packet_id = client._last_mid
    assert wire.subscribe(packet_id, filters) == sent[0]
    client._send_puback(packet_id)
    client._send_simple_command(0xC0)  # PINGREQ
    client._send_simple_command(0xE0)  # DISCONNECT
    assert [wire.puback(packet_id), wire.PINGREQ_PACKET, wire.DISCONNECT_PACKET] == sent[1:]
    assert wire.pubacks([packet_id, 7]) == wire.puback(packet_id) + wire.puback(7)


@given(st.integers(0, wire.MAX_REMAINING_LENGTH))
def test_remaining_length_matches_paho(n: int) -> None:
    client, _ = _paho()
    assert wire.remaining_length(n) == bytes(client._pack_remaining_length(bytearray(), n))


def test_control_packets_are_read_whole() -> None:
    reader = wire.PacketReader(max_payload=100)
    data = b"\x20\x02\x00\x00" + b"\x90\x03\x00\x01\x01" + b"\xd0\x00"
    got = [reader.feed(data[i : i + 1])[2] for i in range(len(data))]
    controls = [c for each in got for c in each]
    assert controls == [
        wire.Control(wire.CONNACK, 0, b"\x00\x00"),
        wire.Control(wire.SUBACK, 0, b"\x00\x01\x01"),
        wire.Control(wire.PINGRESP, 0, b""),
    ]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x30\xff\xff\xff\xff\x01", "over 4 bytes"),
        (b"\x36\x05\x00\x01t\x00\x01", "QoS 3"),
        (b"\x30\x03\x00\x05abc", "topic longer"),
        (b"\x30\x04\x00\x02\xff\xfe", "not UTF-8"),
        (b"\x30\x01\x00", "without a topic"),
        (b"\x90\xff\xff\x04", "packet type 9 of 81919 bytes"),
    ],
)
def test_malformed_input_is_a_protocol_error(data: bytes, why: str) -> None:
    with pytest.raises(wire.ProtocolError, match=why):
        wire.PacketReader(max_payload=100).feed(data)


def test_encoders_refuse_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="out of range"):
        wire.remaining_length(wire.MAX_REMAINING_LENGTH + 1)
    with pytest.raises(ValueError, match="keepalive"):
        wire.connect("c", 70_000)
    with pytest.raises(ValueError, match="max 65535"):
        wire.subscribe(1, [("a" * 70_000, 1)])
    with pytest.raises(ValueError, match="needs a topic filter"):
        wire.subscribe(1, [])
