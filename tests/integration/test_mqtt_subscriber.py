"""The telemetry subscriber (mqtt_subscriber.py, MQTT 3.1.1) against the real Mosquitto,
fed by a plain aiomqtt publisher (not our code): QoS 1 messages arrive in order and are
acknowledged (past the broker's in-flight window of 20), an oversized payload is
reported and the connection goes on, a pause for a full stream loses nothing, a bad
subscription and an unreachable broker end the session with `SubscriberError`; a broker
that stops answering PINGREQ is noticed within the keepalive."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Coroutine

import aiomqtt
import pytest

from tests.polling import async_wait_until
from tests.skips import require_mosquitto
from vsmcp.node.bridges import mqtt_wire as wire
from vsmcp.node.bridges.mqtt_subscriber import SubscriberConfig, SubscriberError, run_session

pytestmark = pytest.mark.integration

WAIT_S = 20.0
CAP = 1024


@pytest.fixture
def broker() -> tuple[str, int]:
    return require_mosquitto()


@pytest.fixture
def prefix() -> str:
    return f"s{secrets.token_hex(6)}"


class Received:
    def __init__(self) -> None:
        self.messages: list[wire.Publish] = []
        self.oversized: list[wire.Oversized] = []
        self.subscribed = asyncio.Event()
        self.ready_answers: list[bool] = []  # what `ready` should say, then True

    def on_messages(self, batch: list[wire.Publish]) -> None:
        self.messages += batch

    def on_oversized(self, batch: list[wire.Oversized]) -> None:
        self.oversized += batch

    def ready(self) -> bool:
        return self.ready_answers.pop(0) if self.ready_answers else True


def _config(broker: tuple[str, int], filters: list[str], keepalive_s: int = 30) -> SubscriberConfig:
    return SubscriberConfig(
        host=broker[0],
        port=broker[1],
        client_id=f"test-{secrets.token_hex(6)}",
        filters=filters,
        max_payload=CAP,
        keepalive_s=keepalive_s,
        timeout_s=10.0,
    )


def _run(config: SubscriberConfig, got: Received) -> Coroutine[None, None, None]:
    return run_session(config, got.on_messages, got.on_oversized, got.subscribed.set, got.ready)


@contextlib.asynccontextmanager
async def session(config: SubscriberConfig, got: Received) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(_run(config, got))
    try:
        await asyncio.wait_for(got.subscribed.wait(), WAIT_S)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, SubscriberError):
            await task


async def _numbered(
    broker: tuple[str, int], got: Received, n: int, topic: Callable[[int], str]
) -> None:
    """Publish "0".."n-1" (QoS 1) on `topic(i)` (under one prefix) to a session; wait
    until all have arrived."""
    prefix = topic(0).split("/")[0]
    async with (
        session(_config(broker, [f"{prefix}/#"]), got),
        aiomqtt.Client(*broker) as publisher,
    ):
        for i in range(n):
            await publisher.publish(topic(i), str(i).encode(), qos=1)
        await async_wait_until(lambda: len(got.messages) >= n, timeout_s=WAIT_S, what="all")


async def test_qos1_messages_arrive_in_order_and_are_acknowledged(
    broker: tuple[str, int], prefix: str
) -> None:
    got = Received()
    # More than the broker's in-flight window (Mosquitto: 20): the rest only come once
    # the first ones are acknowledged.
    n = 200
    await _numbered(broker, got, n, lambda i: f"{prefix}/dev-{i % 3}/temp")
    assert [m.payload for m in got.messages] == [str(i).encode() for i in range(n)]
    assert [m.topic for m in got.messages[:3]] == [f"{prefix}/dev-{i}/temp" for i in range(3)]
    assert {m.qos for m in got.messages} == {1}
    assert all(m.packet_id for m in got.messages)


async def test_oversized_payloads_are_reported_and_reading_goes_on(
    broker: tuple[str, int], prefix: str
) -> None:
    got = Received()
    async with (
        session(_config(broker, [f"{prefix}/#"]), got),
        aiomqtt.Client(*broker) as publisher,
    ):
        await publisher.publish(f"{prefix}/big", b"x" * (CAP * 50), qos=1)
        await publisher.publish(f"{prefix}/small", b"1", qos=1)
        await async_wait_until(lambda: got.messages, timeout_s=WAIT_S, what="the small one")
    assert [(o.topic, o.size, o.qos) for o in got.oversized] == [(f"{prefix}/big", CAP * 50, 1)]
    assert [(m.topic, m.payload) for m in got.messages] == [(f"{prefix}/small", b"1")]


async def test_a_pause_loses_nothing(broker: tuple[str, int], prefix: str) -> None:
    got = Received()
    got.ready_answers = [False, False, False]  # three answers "no room" first
    n = 100
    await _numbered(broker, got, n, lambda i: f"{prefix}/d/m")
    assert got.ready_answers == []  # asked again while paused, until it said yes
    assert [m.payload for m in got.messages] == [str(i).encode() for i in range(n)]


async def test_a_refused_subscription_ends_the_session(broker: tuple[str, int]) -> None:
    got = Received()
    with pytest.raises(SubscriberError):
        await _run(_config(broker, ["a/#/b"]), got)
    assert not got.subscribed.is_set()


async def test_an_unreachable_broker_is_a_subscriber_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: the connection is refused
        got = Received()
        with pytest.raises(SubscriberError, match="cannot connect"):
            await _run(_config(("127.0.0.1", port), ["t/#"]), got)


async def test_a_broker_that_stops_answering_is_noticed_within_the_keepalive() -> None:
    """A stand-in broker speaking MQTT: it accepts, grants, then ignores PINGREQ."""
    pings = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal pings
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            for answer in (b"\x20\x02\x00\x00", b"\x90\x03\x00\x01\x01"):
                head = await reader.readexactly(2)  # CONNECT, SUBSCRIBE (lengths < 128)
                await reader.readexactly(head[1])
                writer.write(answer)  # CONNACK accepted, SUBACK granted QoS 1
            while (await reader.readexactly(2)) == wire.PINGREQ_PACKET:
                pings += 1

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    got = Received()
    try:
        with pytest.raises(SubscriberError, match="no answer from the broker for 1 s"):
            await asyncio.wait_for(
                _run(_config(("127.0.0.1", port), ["t/#"], keepalive_s=1), got),
                WAIT_S,
            )
    finally:
        server.close()
    assert got.subscribed.is_set()
    assert pings >= 1
