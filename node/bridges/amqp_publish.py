"""Publishing many messages on a confirm channel with one socket write.

aiormq's `basic_publish` costs, per message, a lock, a timeout, a frame on the
connection's write queue and one `send` system call, and callers that want many in
flight add a task each: ≈70 % of the node's CPU per published event
(docs/benchmarks.md, "AMQP bridge"). `publish_many` takes the channel's lock once,
gives every message its delivery tag the way `basic_publish` does, and puts all their
frames on the write queue as one payload: one write for the lot. The frames are written
by `Outgoing.marshal`, not pamqp's generic marshalling (≈15 % of the node's CPU per
event).

The confirm of each message is a call of `on_confirm(index, error)` (error None for the
broker's `Basic.Ack`, an exception for a `Basic.Nack`), not a future: a future per
message, registered with aiormq's future store, and gathered, was ≈25 % of the node's
CPU per event (2026-12-07). aiormq's reader settles what stands at a tag in
`channel.confirmations` by calling `done()`, then `set_result(frame)` or
`set_exception(error)` (`Channel._confirm_delivery`); `_Confirm` answers those three.
A channel that closes confirms nothing more and calls nothing: a caller waits on
something the channel rejects when it closes (`channel.create_future()`), or on the
channel's closing itself.

It uses the attributes aiormq's own `basic_publish` uses (`lock`, `delivery_tag`,
`confirmations`, `write_queue`, `max_content_size`); a test against a real broker
(`tests/node/bridges/test_amqp_publish.py`) pins that behaviour.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import aiormq
import aiormq.exceptions
from aiormq.abc import ChannelFrame

# What a lost broker looks like from aio-pika: its errors, a closed channel, the socket
# (a timeout is an OSError too).
BROKER_ERRORS: Final = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish, with the properties the bridges use (absent when None)."""

    routing_key: str
    body: bytes
    exchange: str = ""
    content_type: str | None = "application/json"
    correlation_id: str | None = None
    message_id: str | None = None
    app_id: str | None = None
    persistent: bool = False  # delivery mode 2: the broker writes it to disk
    headers: Mapping[str, str | int] | None = None

    def marshal(self, channel_number: int, max_content_size: int) -> bytes:
        """The method, header and body frames of this publish, as pamqp would write them
        (a test compares), without building pamqp objects for each message."""
        method = _PUBLISH_METHOD + _short_str(self.exchange) + _short_str(self.routing_key)
        flags = 0
        props: list[bytes] = []
        if self.content_type:
            flags |= 1 << 15
            props.append(_short_str(self.content_type))
        if self.headers:
            flags |= 1 << 13
            props.append(_table(self.headers))
        if self.persistent:
            flags |= 1 << 12
            props.append(b"\x02")
        if self.correlation_id:
            flags |= 1 << 10
            props.append(_short_str(self.correlation_id))
        if self.message_id:
            flags |= 1 << 7
            props.append(_short_str(self.message_id))
        if self.app_id:
            flags |= 1 << 3
            props.append(_short_str(self.app_id))
        body = self.body
        header = _HEADER.pack(_BASIC_CLASS, 0, len(body), flags) + b"".join(props)
        out = [_frame(_METHOD_FRAME, channel_number, method + b"\x00")]
        out.append(_frame(_HEADER_FRAME, channel_number, header))
        out.extend(
            _frame(_BODY_FRAME, channel_number, body[i : i + max_content_size])
            for i in range(0, len(body), max_content_size)
        )
        return b"".join(out)


# AMQP 0-9-1 framing (the spec's section 4.2): type, channel, size, payload, frame end.
_FRAME_HEAD: Final = struct.Struct(">BHI")
_FRAME_END: Final = b"\xce"
_METHOD_FRAME: Final = 1
_HEADER_FRAME: Final = 2
_BODY_FRAME: Final = 3
_BASIC_CLASS: Final = 60
# basic.publish (60, 40) and its reserved short; then exchange, routing key, the bits
# mandatory and immediate (never set here).
_PUBLISH_METHOD: Final = struct.pack(">HHH", _BASIC_CLASS, 40, 0)
# class, weight, body size, property flags.
_HEADER: Final = struct.Struct(">HHQH")
# Field-table integers as pamqp writes them: the smallest type that holds the value.
_INTEGERS: Final = (
    (-(2**7), 2**7 - 1, b"b", struct.Struct(">b")),
    (-(2**15), 2**15 - 1, b"s", struct.Struct(">h")),
    (0, 2**16 - 1, b"u", struct.Struct(">H")),
    (-(2**31), 2**31 - 1, b"I", struct.Struct(">i")),
    (0, 2**32 - 1, b"i", struct.Struct(">I")),
    (-(2**63), 2**63 - 1, b"l", struct.Struct(">q")),
)
_LONG: Final = struct.Struct(">I")


def _frame(kind: int, channel_number: int, payload: bytes) -> bytes:
    return _FRAME_HEAD.pack(kind, channel_number, len(payload)) + payload + _FRAME_END


def _short_str(value: str) -> bytes:
    data = value.encode()
    if len(data) > 255:
        raise ValueError(f"AMQP short string over 255 bytes: {value[:40]!r}...")
    return bytes((len(data),)) + data


def _table(table: Mapping[str, str | int]) -> bytes:
    parts: list[bytes] = []
    for key, value in sorted(table.items()):
        parts.append(_short_str(key))
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError(f"header {key!r}: only str and int values, not {type(value)}")
        if isinstance(value, str):
            data = value.encode()
            parts.append(b"S" + _LONG.pack(len(data)) + data)
            continue
        for low, high, tag, packer in _INTEGERS:
            if low <= value <= high:
                parts.append(tag + packer.pack(value))
                break
        else:
            raise ValueError(f"header {key!r}: {value} is out of range")
    data = b"".join(parts)
    return _LONG.pack(len(data)) + data


# `on_confirm(index, error)`: the message at `index` was confirmed (error None) or
# refused. Called from aiormq's channel reader: it must not raise.
OnConfirm = Callable[[int, BaseException | None], None]


class _Confirm:
    """What stands at one delivery tag in `channel.confirmations` in place of a future."""

    __slots__ = ("_done", "_index", "_on_confirm")

    def __init__(self, index: int, on_confirm: OnConfirm) -> None:
        self._index = index
        self._on_confirm = on_confirm
        self._done = False

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return False

    def set_result(self, _frame: Any) -> None:
        self._done = True
        self._on_confirm(self._index, None)

    def set_exception(self, error: BaseException) -> None:
        self._done = True
        self._on_confirm(self._index, error)


async def publish_many(
    channel: aiormq.Channel, messages: Sequence[Outgoing], on_confirm: OnConfirm
) -> None:
    """Send `messages` in one write; the broker's confirm of each calls `on_confirm`
    with its index in `messages` (in the order the broker confirms them).

    The channel must have publisher confirms on. Raises what a closed channel raises
    (nothing was written then, and nothing will be called).
    """
    if not channel.publisher_confirms:
        raise ValueError("publish_many needs a channel with publisher confirms")
    if not messages:
        return
    chunk = channel.max_content_size
    payload = ChannelFrame(
        payload=b"".join(m.marshal(channel.number, chunk) for m in messages),
        should_close=False,
    )
    confirmations = cast(dict[int, Any], channel.confirmations)
    async with channel.lock:
        first = channel.delivery_tag + 1
        for index in range(len(messages)):
            confirmations[first + index] = _Confirm(index, on_confirm)
        channel.delivery_tag += len(messages)
        try:
            await channel.write_queue.put(payload)
        except BaseException:
            # Not written: the broker has not seen these tags; give them back.
            channel.delivery_tag = first - 1
            for tag in range(first, first + len(messages)):
                confirmations.pop(tag, None)
            raise


class BatchConfirms:
    """An `on_confirm` for one batch: `future`, one of the channel's (a closed channel
    fails it), is done once every message of the batch has its confirm, with None when
    the broker took them all, else the index of the first one it refused (`nacked`
    counts the refused ones)."""

    __slots__ = ("_first_refused", "_left", "future", "nacked")

    def __init__(self, channel: aiormq.Channel, size: int) -> None:
        self.future: asyncio.Future[int | None] = channel.create_future()
        self._left = size
        self._first_refused: int | None = None
        self.nacked = 0
        if not size:
            self.future.set_result(None)

    def __call__(self, index: int, error: BaseException | None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.nacked += 1
            if self._first_refused is None or index < self._first_refused:
                self._first_refused = index
        self._left -= 1
        if not self._left:
            self.future.set_result(self._first_refused)
