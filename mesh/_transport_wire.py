"""Transport frame header codec: pure bytes <-> values, no I/O.

A transport message is one ZeroMQ frame, header + payload (a ROUTER prepends the
routing id frame on receipt). One frame, not two: every extra frame costs a libzmq
call on each side, about a third of the per-message cost. The header is 12 bytes,
network order:

    version u8 | kind u8 | priority u8 | reserved u8 (0) | request id u64

Kinds and priorities are append-only: a new value is a new number, never a reuse.
An ERROR payload is `reason` (ASCII) + NUL + `detail` (UTF-8), both capped.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

WIRE_VERSION = 1
HEADER = struct.Struct("!BBBBQ")
HEADER_BYTES = HEADER.size
MAX_ERROR_REASON_BYTES = 64
MAX_ERROR_DETAIL_BYTES = 256


class Kind(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    ERROR = 3
    ONEWAY = 4
    CANCEL = 5


class Priority(enum.IntEnum):
    """Outgoing priority classes; a smaller value is sent first and dropped last."""

    MEMBERSHIP = 0  # probes, acks, suspicion verdicts: late is as bad as lost
    REQUEST = 1  # requests and their responses
    BULK = 2  # gossip, anti-entropy / bulk sync: the next round repeats it anyway


class Header(NamedTuple):
    kind: Kind
    priority: Priority
    request_id: int


_KINDS = {k.value: k for k in Kind}
_PRIORITIES = {p.value: p for p in Priority}


def encode_header(kind: Kind, priority: Priority, request_id: int) -> bytes:
    return HEADER.pack(WIRE_VERSION, kind, priority, 0, request_id)


def decode_header(data: bytes) -> Header | None:
    """The header, or None when `data` is not a well-formed header of our version."""
    if len(data) != HEADER_BYTES:
        return None
    return _unpack_header(data)


def _unpack_header(data: bytes) -> Header | None:
    version, kind, priority, reserved, request_id = HEADER.unpack_from(data)
    if version != WIRE_VERSION or reserved != 0:
        return None
    kind_value = _KINDS.get(kind)
    priority_value = _PRIORITIES.get(priority)
    if kind_value is None or priority_value is None:
        return None
    return Header(kind_value, priority_value, request_id)


def encode_error(reason: str, detail: str = "") -> bytes:
    reason_bytes = reason.encode("ascii", "replace")[:MAX_ERROR_REASON_BYTES]
    detail_bytes = detail.encode("utf-8", "replace")[:MAX_ERROR_DETAIL_BYTES]
    return reason_bytes + b"\0" + detail_bytes


def encode_frame(kind: Kind, priority: Priority, request_id: int, payload: bytes) -> bytes:
    return HEADER.pack(WIRE_VERSION, kind, priority, 0, request_id) + payload


def decode_frame(data: bytes) -> tuple[Header, bytes] | None:
    """(header, payload), or None when `data` does not start with a valid header."""
    if len(data) < HEADER_BYTES:
        return None
    header = _unpack_header(data)
    if header is None:
        return None
    return header, data[HEADER_BYTES:]


def decode_error(payload: bytes) -> tuple[str, str]:
    """(reason, detail) of an ERROR payload; never raises on garbage."""
    reason, _, detail = payload.partition(b"\0")
    return (
        reason[:MAX_ERROR_REASON_BYTES].decode("ascii", "replace") or "unknown",
        detail[:MAX_ERROR_DETAIL_BYTES].decode("utf-8", "replace"),
    )
