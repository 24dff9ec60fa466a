"""The owned write tasks of an AMQP channel (node/bridges/amqp_tasks.py) and what uses
them: once closed (the end of a connection, the bridge's stop), nothing more is
started, so no task outlives it; a refused answer tells its call the channel is gone,
a refused ack write writes nothing."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiormq
import aiormq.exceptions

from tests.node.bridges.test_amqp_acks import Recorder
from tests.polling import async_wait_until
from vsmcp.node.bridges.amqp_acks import Acks
from vsmcp.node.bridges.amqp_replies import Replies
from vsmcp.node.bridges.amqp_tasks import WriteTasks


async def test_a_closed_owner_refuses_new_tasks_and_runs_nothing() -> None:
    tasks = WriteTasks()
    ran: list[str] = []

    async def write(what: str) -> None:
        ran.append(what)

    assert tasks.spawn(write("before"), "t")
    await async_wait_until(lambda: ran == ["before"], what="the first write")
    await tasks.close()
    coro = write("after")
    assert not tasks.spawn(coro, "t")
    assert coro.cr_frame is None  # closed, never to run (no "never awaited" warning)
    assert ran == ["before"]
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "t"]


async def test_answers_after_close_are_reported_as_a_channel_gone() -> None:
    replies = Replies(cast(aiormq.Channel, Recorder()))
    await replies.close()
    outcomes: list[BaseException | None] = []
    replies.reply("q", "c1", b"{}", outcomes.append)
    replies.reply("q", "c2", b"{}", outcomes.append)
    await async_wait_until(lambda: len(outcomes) == 2, what="both answers refused")
    assert all(isinstance(e, aiormq.exceptions.ChannelInvalidStateError) for e in outcomes)
    assert replies.writes == 0


async def test_acks_after_close_write_nothing() -> None:
    recorder = Recorder()
    acks = Acks(cast(aiormq.Channel, recorder), lambda e: None)
    await acks.close()
    acks.track(1)
    acks.ack(1)
    settled: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(settled.set_result, None)  # after the flush
    await settled
    assert recorder.writes == 0 and acks.frames == 0
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "amqp-acks"]
