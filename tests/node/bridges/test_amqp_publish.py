"""`publish_many` (node/bridges/amqp_publish.py) against the real RabbitMQ: its frames
are the bytes pamqp writes for the same publish, the messages of one write arrive whole
and in order, each confirm calls back with its own message's index (an ack, or the
broker's nack), delivery tags stay consistent with aiormq's own `basic_publish` around
them, a batch's `BatchConfirms` names its first refused message once all are confirmed, and a
closed channel fails it (so the outbox keeps what was not confirmed)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pamqp import commands as spec

from tests.polling import async_wait_until
from tests.skips import require_rabbitmq
from vsmcp.node.bridges.amqp_publish import BROKER_ERRORS, BatchConfirms, Outgoing, publish_many

pytestmark = pytest.mark.integration


async def _channels(url: str) -> tuple[Any, Any, Any]:
    import aiormq

    connection = await aiormq.connect(url)
    publisher = await connection.channel(publisher_confirms=True)
    consumer = await connection.channel(publisher_confirms=False)
    return connection, publisher, consumer


def _message(queue: str, i: int, size: int = 16) -> Outgoing:
    return Outgoing(queue, f"{i}:".encode() + b"x" * size, message_id=f"m{i}", headers={"seq": i})


def _pamqp(message: Outgoing, channel: int, chunk: int) -> bytes:
    """The same publish as aiormq's `basic_publish` marshals it (pamqp)."""
    from aiormq.abc import ChannelFrame
    from pamqp.body import ContentBody
    from pamqp.header import ContentHeader

    properties = spec.Basic.Properties(
        content_type=message.content_type,
        headers=dict(message.headers) if message.headers else None,
        delivery_mode=2 if message.persistent else None,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        app_id=message.app_id,
    )
    body = message.body
    frames: list[Any] = [
        spec.Basic.Publish(exchange=message.exchange, routing_key=message.routing_key),
        ContentHeader(properties=properties, body_size=len(body)),
        *(ContentBody(body[i : i + chunk]) for i in range(0, len(body), chunk)),
    ]
    return ChannelFrame.marshall(channel, frames).payload


@pytest.mark.parametrize(
    "message",
    [
        Outgoing("k", b""),
        Outgoing("r\u00e9ponse", b'{"a": 1}', correlation_id="c-1", content_type=None),
        Outgoing(
            "node.tool_call",
            b"x" * 300,
            exchange="vsmcp.events",
            message_id="n:1",
            app_id="vsmcp",
            persistent=True,
            headers={"node": "n\u00f6de", "seq": 1},
        ),
        *(
            Outgoing("k", b"y", headers={"seq": seq, "neg": -seq})
            for seq in (127, 128, 32_768, 65_536, 2**31, 2**32, 2**40)
        ),
    ],
)
def test_the_frames_are_what_pamqp_writes(message: Outgoing) -> None:
    assert message.marshal(7, 128) == _pamqp(message, 7, 128)


def test_what_amqp_cannot_carry_is_refused() -> None:
    with pytest.raises(ValueError, match="255 bytes"):
        Outgoing("k" * 256, b"").marshal(1, 1024)
    with pytest.raises(TypeError, match="only str and int"):
        Outgoing("k", b"", headers={"f": 1.5}).marshal(1, 1024)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="out of range"):
        Outgoing("k", b"", headers={"big": 2**64}).marshal(1, 1024)


async def test_a_batch_arrives_whole_in_order_and_each_is_confirmed() -> None:
    url = require_rabbitmq()
    connection, publisher, consumer = await _channels(url)
    queue = f"vsmcp.test.publish.{uuid.uuid4().hex[:8]}"
    try:
        await consumer.queue_declare(queue, exclusive=True)
        # One big enough to span several body frames (the broker's frame_max).
        big = publisher.max_content_size * 2 + 7
        messages = [_message(queue, i, big if i == 3 else 16) for i in range(500)]
        await publisher.basic_publish(b"before", routing_key=queue)  # aiormq's own, first
        confirms: list[tuple[int, BaseException | None]] = []
        every = BatchConfirms(publisher, len(messages))

        def on_confirm(index: int, error: BaseException | None) -> None:
            confirms.append((index, error))
            every(index, error)

        await publish_many(publisher, messages, on_confirm)
        after = await publisher.basic_publish(b"after", routing_key=queue)
        assert await every.future is None
        assert sorted(confirms, key=lambda c: c[0]) == [(i, None) for i in range(500)]
        assert isinstance(after, spec.Basic.Ack)

        received: list[Any] = []

        async def on_message(message: Any) -> None:
            received.append(message)

        await consumer.basic_consume(queue, on_message, no_ack=True)
        await async_wait_until(lambda: len(received) == 502, what="502 messages")
        bodies = [m.body for m in received]
        assert bodies[0] == b"before" and bodies[-1] == b"after"
        assert bodies[1:-1] == [m.body for m in messages]
        assert [m.header.properties.message_id for m in received[1:-1]] == [
            f"m{i}" for i in range(500)
        ]
        assert received[4].header.properties.headers == {"seq": 3}
        assert received[4].header.properties.content_type == "application/json"
    finally:
        await connection.close()


async def _refusing_queue(channel: Any, max_length: int) -> str:
    """A queue that, once `max_length` messages wait in it, refuses more: the broker
    nacks what it cannot take (`reject-publish`)."""
    queue = f"vsmcp.test.publish.{uuid.uuid4().hex[:8]}"
    arguments = {"x-max-length": max_length, "x-overflow": "reject-publish"}
    await channel.queue_declare(queue, exclusive=True, arguments=arguments)
    return queue


async def test_a_refused_message_is_reported_with_its_index_and_its_batch_names_the_first() -> None:
    url = require_rabbitmq()
    connection, publisher, consumer = await _channels(url)
    try:
        queue = await _refusing_queue(consumer, 3)
        confirms: dict[int, BaseException | None] = {}
        every = BatchConfirms(publisher, 5)

        def on_confirm(index: int, error: BaseException | None) -> None:
            confirms[index] = error
            every(index, error)

        await publish_many(publisher, [_message(queue, i) for i in range(5)], on_confirm)
        # Done once all five have their confirm: the first refused is the fourth.
        assert await every.future == 3
        assert len(confirms) == 5 and every.nacked == 2
        assert [confirms[i] is None for i in range(5)] == [True, True, True, False, False]
    finally:
        await connection.close()


async def test_a_queue_that_refused_one_takes_the_next_once_a_slot_frees() -> None:
    """Why an outbox consumer keeps the set of `seq`s it saw, not the highest: the
    broker refuses entry 1 to a full queue (`reject-publish`), a consumer frees a slot,
    and entry 2, already on its way, is taken; entry 1, sent again, comes after it. The
    same happens inside one batch when the slot frees while the batch is in flight."""
    url = require_rabbitmq()
    connection, publisher, consumer = await _channels(url)
    try:
        queue = await _refusing_queue(consumer, 1)

        async def publish(*seqs: int) -> int | None:
            confirms = BatchConfirms(publisher, len(seqs))
            await publish_many(publisher, [_message(queue, i) for i in seqs], confirms)
            return await confirms.future

        arrivals: list[int] = []

        async def read_one() -> None:
            got = await consumer.basic_get(queue, no_ack=True)
            arrivals.append(int(got.header.properties.headers["seq"]))

        assert await publish(0, 1) == 1  # entry 1 refused: the queue is full
        await read_one()  # a slot frees
        assert await publish(2) is None  # the entry after the refused one is taken
        await read_one()
        assert await publish(1) is None  # the refused one, sent again, is taken last
        await read_one()
        assert arrivals == [0, 2, 1]
    finally:
        await connection.close()


async def test_a_closed_channel_fails_what_is_outstanding_and_refuses_more() -> None:
    url = require_rabbitmq()
    connection, publisher, _ = await _channels(url)
    try:
        # No such exchange: the broker closes the channel (404), so nothing is confirmed.
        missing = f"vsmcp.test.missing.{uuid.uuid4().hex[:8]}"
        messages = [Outgoing("k", b"x", exchange=missing) for _ in range(20)]
        confirmed: list[int] = []
        every = BatchConfirms(publisher, len(messages))

        def on_confirm(index: int, error: BaseException | None) -> None:
            confirmed.append(index)
            every(index, error)

        await publish_many(publisher, messages, on_confirm)
        with pytest.raises(BROKER_ERRORS):
            await every.future
        assert confirmed == []
        with pytest.raises(BROKER_ERRORS):
            await publish_many(publisher, messages, on_confirm)
    finally:
        await connection.close()


async def test_a_channel_without_confirms_is_refused() -> None:
    url = require_rabbitmq()
    connection, _, consumer = await _channels(url)
    try:
        with pytest.raises(ValueError, match="publisher confirms"):
            await publish_many(consumer, [_message("q", 1)], lambda _i, _e: None)
    finally:
        await connection.close()
