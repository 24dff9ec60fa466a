"""Batched acks (node/bridges/amqp_acks.py): one `multiple` frame for a run of settled
deliveries, one by one behind a delivery still running, never a tag acked twice, never
a `multiple` over a delivery not settled, the frames of one flush in one write. The
channel is a recorder of what is put on aiormq's write queue, decoded by pamqp (the real
channel is exercised by tests/integration/test_bridge_amqp.py)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiormq
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp import frame as pamqp_frame

from tests.polling import async_wait_until
from vsmcp.node.bridges.amqp_acks import Acks


class Recorder:
    """The attributes of an aiormq channel that the acks use."""

    number = 7
    is_closed = False

    def __init__(self) -> None:
        self.frames: list[tuple[int, bool]] = []
        self.writes = 0
        self.write_queue = self

    async def put(self, payload: Any) -> None:
        self.writes += 1
        data = payload.payload
        while data:
            used, channel, frame = pamqp_frame.unmarshal(data)
            assert channel == self.number and isinstance(frame, spec.Basic.Ack)
            assert frame.delivery_tag is not None
            self.frames.append((frame.delivery_tag, bool(frame.multiple)))
            data = data[used:]


def _acks() -> tuple[Acks, Recorder]:
    recorder = Recorder()
    return Acks(cast(aiormq.Channel, recorder), lambda e: None), recorder


async def _sent(recorder: Recorder, count: int) -> list[tuple[int, bool]]:
    await async_wait_until(lambda: len(recorder.frames) >= count, what=f"{count} ack frames")
    return recorder.frames


def _outstanding_after(frames: list[tuple[int, bool]], delivered: int) -> set[int]:
    """What the broker still holds after `frames`, as RabbitMQ applies them."""
    outstanding = set(range(1, delivered + 1))
    for tag, multiple in frames:
        assert tag in outstanding, f"ack of {tag}, which is not outstanding"
        if multiple:
            outstanding = {t for t in outstanding if t > tag}
        else:
            outstanding.discard(tag)
    return outstanding


async def test_a_run_settled_together_is_one_multiple_ack() -> None:
    acks, recorder = _acks()
    for tag in range(1, 6):
        acks.track(tag)
    for tag in range(1, 6):
        acks.ack(tag)
    assert await _sent(recorder, 1) == [(5, True)]
    assert acks.frames == 1


async def test_a_slow_delivery_does_not_hold_the_others() -> None:
    acks, recorder = _acks()
    for tag in range(1, 6):
        acks.track(tag)
    for tag in (2, 3):
        acks.ack(tag)
    assert await _sent(recorder, 2) == [(2, False), (3, False)]
    assert recorder.writes == 1
    acks.ack(1)
    await _sent(recorder, 3)
    for tag in (4, 5):
        acks.ack(tag)
    frames = await _sent(recorder, 4)
    assert frames == [(2, False), (3, False), (1, True), (5, True)]
    assert _outstanding_after(frames, 5) == set()


async def test_a_rejected_delivery_is_never_acked_nor_named_by_a_multiple() -> None:
    acks, recorder = _acks()
    for tag in (1, 2, 3):
        acks.track(tag)
    acks.ack(1)
    acks.settled_elsewhere(2)
    frames = await _sent(recorder, 1)
    assert frames == [(1, True)]
    acks.ack(3)
    frames = await _sent(recorder, 2)
    # The broker no longer holds 2 (rejected): what is left of 1..3 is nothing.
    assert _outstanding_after(frames, 3) - {2} == set()
    assert all(tag != 2 for tag, _ in frames)


async def test_an_unseen_tag_ends_the_run() -> None:
    acks, recorder = _acks()
    acks.track(1)
    acks.track(3)  # 2's task has not started yet
    acks.ack(1)
    acks.ack(3)
    frames = await _sent(recorder, 2)
    assert frames == [(1, True), (3, False)]
    assert recorder.writes == 1  # the frames of one flush, in one write
    acks.track(2)
    acks.ack(2)
    frames = await _sent(recorder, 3)
    assert _outstanding_after(frames, 3) == set()


async def test_a_forgotten_delivery_is_never_acked() -> None:
    acks, recorder = _acks()
    acks.track(1)
    acks.forget(1)
    acks.ack(1)
    acks.track(2)
    acks.ack(2)
    # The flush that sends 2 would carry an ack of 1 too: there is none.
    assert await _sent(recorder, 1) == [(2, False)]
    await acks.close()


class SlowWriter:
    """An aiormq channel whose write queue holds one frame (aiormq's holds 10): the
    writer behind, a full queue makes the acks' writes wait for room."""

    number = 7
    is_closed = False

    def __init__(self) -> None:
        self.write_queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        self.frames: list[tuple[int, bool]] = []

    async def read(self) -> None:
        """The connection's writer: takes what is queued, in order."""
        while True:
            payload = await self.write_queue.get()
            data = payload.payload
            while data:
                used, _, frame = pamqp_frame.unmarshal(data)
                self.frames.append((frame.delivery_tag, bool(frame.multiple)))
                data = data[used:]


async def test_frames_of_two_flushes_reach_a_full_write_queue_in_order() -> None:
    channel = SlowWriter()
    acks = Acks(cast(aiormq.Channel, channel), lambda e: None)
    channel.write_queue.put_nowait(ChannelFrame(payload=b"", should_close=False))
    # Flush 1: 1 still running, 2 answered: a single ack of 2, waiting for room.
    acks.track(1)
    acks.track(2)
    acks.ack(2)
    await asyncio.sleep(0)  # the flush
    await asyncio.sleep(0)  # its write starts and waits for room
    # Flush 2: 1 and 3 answered: a multiple ack of 3 (covering 2, acked before it).
    acks.ack(1)
    acks.track(3)
    acks.ack(3)
    await asyncio.sleep(0)  # the flush
    # The writer takes the frame ahead (the first flush's write is woken, but a write
    # started by now would run before it and take the room), then reads on.
    channel.write_queue.get_nowait()
    reader = asyncio.create_task(channel.read())
    try:
        await async_wait_until(lambda: len(channel.frames) >= 2, what="both flushes' acks")
        # RabbitMQ closes the channel at an ack of a tag a `multiple` ack already took.
        assert _outstanding_after(channel.frames, 3) == set()
        assert channel.frames == [(2, False), (3, True)]
    finally:
        reader.cancel()
        await acks.close()
