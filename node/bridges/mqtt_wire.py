"""MQTT 3.1.1 wire format, the subscriber's part only (OASIS MQTT 3.1.1, §2–3): the
packets a telemetry subscriber sends (CONNECT, SUBSCRIBE, PUBACK, PINGREQ, DISCONNECT)
and an incremental reader of what a broker sends it (CONNACK, SUBACK, PUBLISH,
PINGRESP).

Why hand-written: paho's pure-Python reader costs ≈60 % of the bridge's time per
telemetry message (docs/benchmarks.md "MQTT bridge"); this reader takes every whole
packet in a received chunk in one pass. Publishing, MQTT 5 and QoS 2 stay with aiomqtt.

Everything read is bounded: a PUBLISH whose payload is over the cap is reported with its
size and its bytes discarded as they arrive (never buffered); any other packet over
`MAX_CONTROL_BYTES`, a malformed length, a bad topic or a QoS of 3 is a `ProtocolError`
(the connection is then dropped).
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

PROTOCOL_LEVEL: Final = 4  # MQTT 3.1.1
CONNECT: Final = 1
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
SUBSCRIBE: Final = 8
SUBACK: Final = 9
PINGREQ_PACKET: Final = b"\xc0\x00"
PINGRESP: Final = 13
DISCONNECT_PACKET: Final = b"\xe0\x00"
SUBACK_FAILURE: Final = 0x80
MAX_REMAINING_LENGTH: Final = 268_435_455  # four length bytes
# A broker sends a subscriber nothing but PUBLISH that is larger than a SUBACK.
MAX_CONTROL_BYTES: Final = 65_536
MAX_STRING_BYTES: Final = 65_535
_PUBACK_HEAD: Final = bytes((PUBACK << 4, 2))
_U16: Final = struct.Struct("!H")


class ProtocolError(ValueError):
    """The broker sent something that is not MQTT 3.1.1 (or over a bound)."""


class Publish(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    packet_id: int  # 0 at QoS 0
    retain: bool
    dup: bool


class Oversized(NamedTuple):
    """A PUBLISH over the payload cap: its bytes are skipped, it still needs its PUBACK."""

    topic: str
    size: int  # payload bytes
    qos: int
    packet_id: int


class Control(NamedTuple):
    """Any other packet: its type (high nibble), flags (low nibble) and body."""

    type: int
    flags: int
    body: bytes


# -- encoding ----------------------------------------------------------------------------


def remaining_length(n: int) -> bytes:
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    if len(data) > MAX_STRING_BYTES:
        raise ValueError(f"string of {len(data)} bytes (max {MAX_STRING_BYTES})")
    return _U16.pack(len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + remaining_length(len(body)) + body


def connect(
    client_id: str,
    keepalive_s: int,
    *,
    username: str | None = None,
    password: str | None = None,
    clean_session: bool = True,
) -> bytes:
    """CONNECT (no will: the telemetry connection announces nothing)."""
    if not 0 <= keepalive_s <= 0xFFFF:
        raise ValueError(f"keepalive {keepalive_s} s out of range")
    flags = 0x02 if clean_session else 0
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    head = _string("MQTT") + bytes((PROTOCOL_LEVEL, flags)) + _U16.pack(keepalive_s)
    return _packet(CONNECT << 4, head + payload)


def subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    if not filters:
        raise ValueError("SUBSCRIBE needs a topic filter")
    body = _U16.pack(packet_id) + b"".join(_string(f) + bytes((qos,)) for f, qos in filters)
    return _packet(SUBSCRIBE << 4 | 0x2, body)


def puback(packet_id: int) -> bytes:
    return _PUBACK_HEAD + _U16.pack(packet_id)


def pubacks(packet_ids: list[int]) -> bytes:
    """The PUBACKs of a batch, for one write."""
    head = _PUBACK_HEAD
    return b"".join([head + pid.to_bytes(2, "big") for pid in packet_ids])


# -- reading -----------------------------------------------------------------------------


class PacketReader:
    """Reads packets from the bytes of a connection as they arrive (`feed`)."""

    def __init__(self, max_payload: int) -> None:
        self._max_payload = max_payload
        self._buffer = bytearray()
        self._skip = 0  # bytes of an oversized PUBLISH still to discard

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> tuple[list[Publish], list[Oversized], list[Control]]:
        """The whole packets now available, in three lists (each in arrival order;
        a caller needing the order across them has only SUBACK/CONNACK to mind)."""
        if self._skip:
            taken = min(self._skip, len(data))
            self._skip -= taken
            data = data[taken:]
        buf = self._buffer
        buf += data
        publishes: list[Publish] = []
        oversized: list[Oversized] = []
        controls: list[Control] = []
        n = len(buf)
        pos = 0
        max_payload = self._max_payload
        while n - pos >= 2:
            first = buf[pos]
            # The remaining length: 1 to 4 bytes, 7 bits each, least significant first.
            i = pos + 1
            length = 0
            shift = 0
            complete = False
            while i < n:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    complete = True
                    break
                shift += 7
                if shift > 21:
                    raise ProtocolError("remaining length over 4 bytes")
            if not complete:
                break
            end = i + length
            kind = first >> 4
            if kind == PUBLISH:
                qos = (first >> 1) & 3
                if qos == 3:
                    raise ProtocolError("PUBLISH with QoS 3")
                if n - i < 2:
                    if length < 2:
                        raise ProtocolError("PUBLISH without a topic")
                    break
                topic_len = buf[i] << 8 | buf[i + 1]
                head = 2 + topic_len + (2 if qos else 0)
                if head > length:
                    raise ProtocolError("PUBLISH topic longer than the packet")
                if n - i < head:
                    break
                j = i + 2 + topic_len
                try:
                    topic = buf[i + 2 : j].decode()
                except UnicodeDecodeError:
                    raise ProtocolError("PUBLISH topic is not UTF-8") from None
                packet_id = 0
                if qos:
                    packet_id = buf[j] << 8 | buf[j + 1]
                    j += 2
                size = length - head
                if size > max_payload:
                    oversized.append(Oversized(topic, size, qos, packet_id))
                    pos = min(end, n)
                    self._skip = end - pos
                    continue
                if end > n:
                    break
                publishes.append(
                    Publish(
                        topic, bytes(buf[j:end]), qos, packet_id, bool(first & 1), bool(first & 8)
                    )
                )
            else:
                if length > MAX_CONTROL_BYTES:
                    raise ProtocolError(f"packet type {kind} of {length} bytes")
                if end > n:
                    break
                controls.append(Control(kind, first & 0x0F, bytes(buf[i:end])))
            pos = end
        if pos:
            del buf[:pos]
        return publishes, oversized, controls
