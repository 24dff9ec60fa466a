"""Publishing many messages on a confirm channel with one socket write.

aiormq's `basic_publish` costs, per message, a lock, a timeout, a frame on the
connection's write queue and one `send` system call, and callers that want many in
flight add a task each: ≈70 % of the node's CPU per published event
(docs/benchmarks.md, "AMQP bridge"). `publish_many` takes the channel's lock once,
gives every message its delivery tag and confirmation future the way `basic_publish`
does, and puts all their frames on the write queue as one payload: one write for the
lot. What a confirmation means is unchanged: each future is the broker's `Basic.Ack`
of its own message (a `Basic.Nack` or a closed channel is its exception), in the order
given.

It uses the attributes aiormq's own `basic_publish` uses (`lock`, `delivery_tag`,
`confirmations`, `create_future`, `write_queue`, `max_content_size`); a test against a
real broker (`tests/node/bridges/test_amqp_publish.py`) pins that behaviour.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiormq
import aiormq.exceptions
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

# What a lost broker looks like from aio-pika: its errors, a closed channel, the socket
# (a timeout is an OSError too).
BROKER_ERRORS: Final = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    routing_key: str
    body: bytes
    properties: spec.Basic.Properties
    exchange: str = ""


async def publish_many(
    channel: aiormq.Channel, messages: Sequence[Outgoing]
) -> list[asyncio.Future[Any]]:
    """Send `messages` in one write; their confirmations, in the same order.

    The channel must have publisher confirms on. Await the futures (e.g. with
    `asyncio.gather`) to know each was taken by the broker.
    """
    if not channel.publisher_confirms:
        raise ValueError("publish_many needs a channel with publisher confirms")
    if not messages:
        return []
    frames: list[Any] = []
    chunk = channel.max_content_size
    for message in messages:
        body = message.body
        frames.append(
            spec.Basic.Publish(exchange=message.exchange, routing_key=message.routing_key)
        )
        frames.append(ContentHeader(properties=message.properties, body_size=len(body)))
        frames.extend(ContentBody(body[i : i + chunk]) for i in range(0, len(body), chunk))
    payload = ChannelFrame.marshall(channel.number, frames)
    confirmations: list[asyncio.Future[Any]] = []
    async with channel.lock:
        first = channel.delivery_tag + 1
        for tag in range(first, first + len(messages)):
            future = channel.create_future()
            channel.confirmations[tag] = future
            confirmations.append(future)
        channel.delivery_tag += len(messages)
        try:
            await channel.write_queue.put(payload)
        except BaseException:
            # Not written: the broker has not seen these tags; give them back.
            channel.delivery_tag = first - 1
            for tag, future in zip(range(first, first + len(messages)), confirmations, strict=True):
                channel.confirmations.pop(tag, None)
                future.cancel()
            raise
    return confirmations
