"""node.http.status_page.PageHub on a real EventStream: frames, resyncs, drops, the cap."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from tests.polling import async_wait_for
from vsmcp.node.http.status_page import (
    CLIENT_QUEUE_FRAMES,
    MAX_FRAME_EVENTS,
    PageHub,
    static_file,
)
from vsmcp.node.vsm.events import MembershipChanged, ToolCallFinished
from vsmcp.node.vsm.stream import EventStream


@pytest.fixture
async def stream() -> AsyncIterator[EventStream]:
    events = EventStream()
    await events.start()
    yield events
    await events.stop()


def _member(i: int) -> MembershipChanged:
    return MembershipChanged(ts=float(i), peer=f"peer-{i}", state="dead", previous="suspect")


def _frame(raw: bytes | None) -> tuple[str, object]:
    assert raw is not None
    head, data = raw.decode().strip().split("\n")
    return head.removeprefix("event: "), json.loads(data.removeprefix("data: "))


async def test_a_batch_is_one_frame_and_tool_calls_are_left_out(stream: EventStream) -> None:
    hub = PageHub(stream, max_clients=2)
    client = hub.open(None)
    assert client is not None
    stream.publish(ToolCallFinished(ts=1.0, tool="echo", provider="p", origin="o", zone="public"))
    stream.publish(_member(1))
    kind, data = _frame(await client.queue.get())
    assert kind == "events"
    assert data == [
        {"kind": "membership", "ts": 1.0, "peer": "peer-1", "state": "dead",
         "previous": "suspect", "zone": None}
    ]  # fmt: skip
    assert [e["kind"] for e in hub.recent_events(10)] == ["membership"]


async def test_a_batch_too_big_for_a_frame_is_a_resync(stream: EventStream) -> None:
    hub = PageHub(stream)
    client = hub.open(None)
    assert client is not None
    stream.publish_many(_member(i) for i in range(MAX_FRAME_EVENTS + 1))
    assert _frame(await client.queue.get()) == ("resync", {"events": MAX_FRAME_EVENTS + 1})
    assert hub.resyncs == 1


async def test_a_client_that_does_not_read_is_dropped_and_the_cap_refuses(
    stream: EventStream,
) -> None:
    hub = PageHub(stream, max_clients=2)
    stalled, reading = hub.open(None), hub.open(None)
    assert stalled is not None and reading is not None
    assert hub.open(None) is None and hub.refused == 1

    async def delivered() -> bool:
        return not reading.queue.empty()

    for i in range(CLIENT_QUEUE_FRAMES + 1):
        stream.publish(_member(i))  # one batch, one frame: the reading client takes it
        await async_wait_for(delivered, what=f"frame {i}")
        reading.queue.get_nowait()
    assert hub.dropped == 1 and hub.clients == 1
    assert stalled.queue.qsize() == CLIENT_QUEUE_FRAMES  # bounded: nothing past the queue
    assert hub.open(None) is not None  # its place is free


def test_every_static_file_is_shipped() -> None:
    page = static_file("index.html").decode()
    assert '<script src="/static/page.js"' in page and "/static/page.css" in page
    assert b"EventSource" in static_file("page.js")
