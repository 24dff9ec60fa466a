"""The event stream: bounded non-blocking publish, counted drops, owned subscriber
tasks, batches, failures that stop nothing, idempotent start/stop, draining on stop."""

from __future__ import annotations

import asyncio

import pytest

from tests.polling import async_wait_until
from vsmcp.node.vsm import stream as stream_module
from vsmcp.node.vsm.errors import VsmError
from vsmcp.node.vsm.events import Denial, Event, ToolCallFinished
from vsmcp.node.vsm.stream import EventStream


def denial(i: int) -> Denial:
    return Denial(ts=float(i), origin=f"o{i}", zone="ops", limit="rate", blocked="t")


def call(i: int) -> ToolCallFinished:
    return ToolCallFinished(ts=float(i), tool="t", provider="p", origin="o", zone="ops")


async def test_events_reach_every_subscriber_in_order() -> None:
    stream = EventStream()
    first: list[Event] = []
    second: list[Event] = []
    stream.subscribe("first", first.extend)
    stream.subscribe("second", second.extend)
    async with stream:
        for i in range(100):
            stream.publish(denial(i))
        await async_wait_until(lambda: len(first) == 100 and len(second) == 100, what="all")
    assert first == second == [denial(i) for i in range(100)]


async def test_events_published_before_start_wait_in_the_buffer() -> None:
    stream = EventStream()
    got: list[Event] = []
    stream.subscribe("s", got.extend)
    stream.publish(denial(1))
    async with stream:
        await async_wait_until(lambda: got, what="the early event")
    assert got == [denial(1)]


async def test_a_full_buffer_drops_and_counts_and_publish_never_raises() -> None:
    stream = EventStream()
    got: list[Event] = []
    sub = stream.subscribe("slow", got.extend, capacity=10)
    # Not started: nothing drains, so the 11th event on is dropped.
    for i in range(25):
        stream.publish(denial(i))
    assert sub.dropped == 15
    async with stream:
        await async_wait_until(lambda: len(got) == 10, what="the buffered events")
    assert got == [denial(i) for i in range(10)]
    assert stream.stats()["subscribers"]["slow"]["dropped"] == 15


async def test_a_slow_subscriber_drops_only_its_own_events() -> None:
    stream = EventStream()
    release = asyncio.Event()
    slow: list[Event] = []
    fast: list[Event] = []

    async def blocked(batch: list[Event]) -> None:
        await release.wait()
        slow.extend(batch)

    slow_sub = stream.subscribe("slow", blocked, capacity=5)
    fast_sub = stream.subscribe("fast", fast.extend, capacity=1000)
    async with stream:
        stream.publish(denial(0))
        await async_wait_until(lambda: not slow_sub.buffer, what="the slow one took a batch")
        for i in range(1, 21):
            stream.publish(denial(i))
        await async_wait_until(lambda: len(fast) == 21, what="the fast one")
        release.set()
        await async_wait_until(lambda: len(slow) == 6, what="the slow one")
    assert slow_sub.dropped == 15 and fast_sub.dropped == 0


async def test_a_failing_handler_is_counted_and_the_stream_goes_on() -> None:
    stream = EventStream()
    got: list[Event] = []

    def handler(batch: list[Event]) -> None:
        if any(e == denial(0) for e in batch):
            raise ValueError("boom")
        got.extend(batch)

    sub = stream.subscribe("s", handler)
    async with stream:
        stream.publish(denial(0))
        await async_wait_until(lambda: sub.failures == 1, what="the failure")
        stream.publish(denial(1))
        await async_wait_until(lambda: got, what="the next batch")
    assert got == [denial(1)]
    assert sub.task is None  # stopped


async def test_kinds_filter_what_a_subscriber_sees() -> None:
    stream = EventStream()
    got: list[Event] = []
    stream.subscribe("calls", got.extend, kinds=[ToolCallFinished])
    other: list[Event] = []
    stream.subscribe("all", other.extend)
    async with stream:
        stream.publish(denial(0))
        stream.publish(call(1))
        await async_wait_until(lambda: len(other) == 2, what="both events")
        await async_wait_until(lambda: got, what="the call")
    assert got == [call(1)]


async def test_subscriber_tasks_are_named_and_owned_and_start_stop_are_idempotent() -> None:
    stream = EventStream()
    sub = stream.subscribe("audit", lambda batch: None)
    await stream.start()
    await stream.start()
    assert sub.task is not None and sub.task.get_name() == "events-audit"
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert "events-audit" in names
    task = sub.task
    await stream.stop()
    await stream.stop()
    assert task.done() and sub.task is None
    assert "events-audit" not in {t.get_name() for t in asyncio.all_tasks()}


async def test_stop_drains_what_was_buffered_and_later_publishes_are_counted() -> None:
    stream = EventStream()
    got: list[Event] = []
    stream.subscribe("s", got.extend)
    await stream.start()
    for i in range(1000):
        stream.publish(denial(i))
    await stream.stop()  # no yield between publish and stop: stop must drain
    assert len(got) == 1000
    stream.publish(denial(1))
    assert stream.after_stop == 1 and len(got) == 1000


async def test_a_subscriber_added_while_running_starts_and_can_leave() -> None:
    stream = EventStream()
    async with stream:
        got: list[Event] = []
        sub = stream.subscribe("late", got.extend)
        assert sub.task is not None
        stream.publish(denial(0))
        await async_wait_until(lambda: got, what="delivery")
        stream.publish(denial(1))
        await stream.unsubscribe("late")  # drains first
        assert got == [denial(0), denial(1)]
        assert stream.subscribers() == ()
        stream.publish(denial(2))  # nobody listens: fine


async def test_bad_subscriptions_are_refused() -> None:
    stream = EventStream()
    stream.subscribe("s", lambda batch: None)
    with pytest.raises(VsmError, match="exists"):
        stream.subscribe("s", lambda batch: None)
    with pytest.raises(VsmError, match="capacity"):
        stream.subscribe("t", lambda batch: None, capacity=0)


async def test_a_handler_that_publishes_does_not_starve_the_loop() -> None:
    stream = EventStream()
    seen = 0

    def echo(batch: list[Event]) -> None:
        nonlocal seen
        seen += len(batch)
        stream.publish(denial(seen))  # forever: each batch makes the next

    sub = stream.subscribe("echo", echo)
    async with stream:
        stream.publish(denial(0))
        # This task gets its turns (else the test would hang here) while the echo runs.
        await async_wait_until(lambda: seen > 10, what="the echo running")
    assert sub.failures == 0


class Fatal(BaseException):
    """Not an Exception: gets past the handler guard and kills the subscriber task."""


async def test_a_subscriber_task_that_dies_is_restarted() -> None:
    stream = EventStream()
    got: list[Event] = []

    def handler(batch: list[Event]) -> None:
        if denial(0) in batch:
            raise Fatal
        got.extend(batch)

    sub = stream.subscribe("fragile", handler)
    async with stream:
        stream.publish(denial(0))
        await async_wait_until(lambda: sub.crashes == 1, what="the crash")
        stream.publish(denial(1))
        await async_wait_until(lambda: got, what="delivery after the restart")
        assert sub.task is not None and sub.task.get_name() == "events-fragile"
    assert got == [denial(1)]


async def test_stop_survives_a_subscriber_dying_while_draining() -> None:
    stream = EventStream()

    def handler(batch: list[Event]) -> None:
        raise Fatal

    sub = stream.subscribe("fragile", handler)
    await stream.start()
    stream.publish(denial(0))
    await stream.stop()  # the task dies on the drained batch: stop still returns
    assert sub.crashes == 1 and sub.task is None


async def test_a_subscriber_that_never_finishes_is_cancelled_on_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream_module, "STOP_DRAIN_TIMEOUT_S", 0.05)
    stream = EventStream()
    cancelled = asyncio.Event()

    async def stuck(batch: list[Event]) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    sub = stream.subscribe("stuck", stuck)
    await stream.start()
    stream.publish(denial(0))
    await async_wait_until(lambda: not sub.buffer, what="the handler holding the batch")
    task = sub.task
    await stream.stop()
    assert cancelled.is_set() and task is not None and task.cancelled()


async def test_room_is_the_least_free_space_among_the_buffers_a_kind_goes_to() -> None:
    stream = EventStream()
    assert stream.room(Denial) == stream_module.MAX_SUBSCRIBER_CAPACITY  # nobody listens
    stream.subscribe("denials", lambda batch: None, capacity=10, kinds=[Denial])
    stream.subscribe("all", lambda batch: None, capacity=50)
    for i in range(4):  # not started: the events wait in the buffers
        stream.publish(denial(i))
    stream.publish(call(0))
    assert stream.room(Denial) == 10 - 4
    assert stream.room(ToolCallFinished) == 50 - 5  # the denials' buffer takes none of it
    # The smallest buffer a kind goes to, whatever it holds now.
    assert stream.capacity(Denial) == 10 and stream.capacity(ToolCallFinished) == 50
