"""A minimal MQTT 3.1.1 subscriber (asyncio Protocol) for the bridge's telemetry: connect,
subscribe, hand every received batch of PUBLISH packets to a plain function in the
same event-loop turn the bytes arrived in, then acknowledge the QoS 1 ones (so a message
is acknowledged only once it is on the node's event stream), ping to keep the connection
alive. mqtt_wire.py holds the wire format; the reason for both is there.

`run_session` returns only by raising `SubscriberError` (refused, lost, silent broker);
the caller (the bridge's `bridge-mqtt-telemetry` loop) reconnects with backoff. The
session is clean (MQTT "clean session"): while it is down the broker keeps nothing for
it, as for the bridge's main connection.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar, cast

from vsmcp.node.bridges import mqtt_wire as wire

CONNACK_REFUSALS: Final = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}
FIRST: Final = asyncio.FIRST_COMPLETED
SUBSCRIBE_ID: Final = 1  # one SUBSCRIBE per connection, so one packet id


T = TypeVar("T")


class SubscriberError(Exception):
    """The telemetry connection failed or ended; the message says how."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriberConfig:
    host: str
    port: int
    client_id: str
    filters: Sequence[str]
    max_payload: int
    keepalive_s: int
    timeout_s: float
    username: str | None = None
    password: str | None = None
    qos: int = 1
    tls: ssl.SSLContext | None = None  # None: plain TCP


# Called with the PUBLISH packets of one received chunk (never empty), then with the
# oversized ones (their payloads were dropped unread; may be empty).
OnMessages = Callable[[list[wire.Publish]], None]
OnOversized = Callable[[list[wire.Oversized]], None]
# May more be read now? False: reading pauses (TCP pushes back to the broker) and this
# is asked again every PAUSE_POLL_S until it says True.
Ready = Callable[[], bool]
PAUSE_POLL_S: Final = 0.005


class SubscriberProtocol(asyncio.Protocol):
    def __init__(
        self,
        config: SubscriberConfig,
        on_messages: OnMessages,
        on_oversized: OnOversized,
        ready: Ready,
    ) -> None:
        self._config = config
        self._on_messages = on_messages
        self._on_oversized = on_oversized
        self._ready = ready
        self.paused = False
        self._reader = wire.PacketReader(config.max_payload)
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[int] = loop.create_future()
        self.suback: asyncio.Future[bytes] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.last_heard = time.monotonic()
        self.error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        c = self._config
        self.transport.write(
            wire.connect(c.client_id, c.keepalive_s, username=c.username, password=c.password)
        )

    def data_received(self, data: bytes) -> None:
        self.last_heard = time.monotonic()
        try:
            publishes, oversized, controls = self._reader.feed(data)
        except wire.ProtocolError as e:
            self.fail(f"protocol error: {e}")
            return
        for control in controls:
            self._control(control)
        if self.error is not None:  # failed on a control packet: the rest is not read
            return
        acks: list[int] = []
        if publishes:
            self._on_messages(publishes)
            acks = [p.packet_id for p in publishes if p.qos]
        if oversized:
            self._on_oversized(oversized)
            acks += [o.packet_id for o in oversized if o.qos]
        if self.transport is None:  # pragma: no cover - set before any data arrives
            return
        if acks:
            self.transport.write(wire.pubacks(acks))
        if publishes and not self._ready():
            self.paused = True
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(PAUSE_POLL_S, self._maybe_resume)

    def _maybe_resume(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self._ready():
            asyncio.get_running_loop().call_later(PAUSE_POLL_S, self._maybe_resume)
            return
        self.paused = False
        self.last_heard = time.monotonic()  # nothing was read while paused
        transport.resume_reading()

    def _control(self, control: wire.Control) -> None:
        if control.type == wire.CONNACK:
            if len(control.body) != 2 or self.connack.done():
                self.fail("unexpected CONNACK")
            else:
                self.connack.set_result(control.body[1])
        elif control.type == wire.SUBACK:
            if len(control.body) < 3 or self.suback.done():
                self.fail("unexpected SUBACK")
            elif int.from_bytes(control.body[:2], "big") == SUBSCRIBE_ID:
                self.suback.set_result(control.body[2:])
        elif control.type != wire.PINGRESP:
            self.fail(f"unexpected packet type {control.type}")

    def fail(self, reason: str) -> None:
        self.error = reason
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            self.error = f"connection lost: {exc}" if exc else "the broker closed the connection"
        if not self.closed.done():
            self.closed.set_result(None)

    def ping(self) -> None:
        if self.transport is not None:
            self.transport.write(wire.PINGREQ_PACKET)

    def close(self) -> None:
        """A clean end: DISCONNECT, then close."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(wire.DISCONNECT_PACKET)
            self.transport.close()


async def run_session(
    config: SubscriberConfig,
    on_messages: OnMessages,
    on_oversized: OnOversized,
    on_subscribed: Callable[[], None],
    ready: Ready,
) -> None:
    """Connect, subscribe, then read until the connection ends (raises `SubscriberError`)."""
    loop = asyncio.get_running_loop()
    protocol = SubscriberProtocol(config, on_messages, on_oversized, ready)
    try:
        await asyncio.wait_for(
            loop.create_connection(lambda: protocol, config.host, config.port, ssl=config.tls),
            config.timeout_s,
        )
    except (OSError, TimeoutError) as e:
        raise SubscriberError(f"cannot connect: {e or type(e).__name__}") from e
    try:
        code = await _answer(protocol, protocol.connack, config.timeout_s, "CONNACK")
        if code != 0:
            raise SubscriberError(
                f"the broker refused the connection: {CONNACK_REFUSALS.get(code, code)}"
            )
        assert protocol.transport is not None
        protocol.transport.write(
            wire.subscribe(SUBSCRIBE_ID, [(f, config.qos) for f in config.filters])
        )
        granted = await _answer(protocol, protocol.suback, config.timeout_s, "SUBACK")
        refused = [
            f for f, g in zip(config.filters, granted, strict=False) if g >= wire.SUBACK_FAILURE
        ]
        if refused or len(granted) != len(config.filters):
            raise SubscriberError(
                f"the broker refused the subscription to {refused or config.filters}"
            )
        on_subscribed()
        await _keep_alive(protocol, config.keepalive_s)
    finally:
        protocol.close()


async def _answer(
    protocol: SubscriberProtocol, waiter: asyncio.Future[T], timeout_s: float, what: str
) -> T:
    """The broker's answer to what we sent, unless the connection ends or it is late."""
    await asyncio.wait((waiter, protocol.closed), timeout=timeout_s, return_when=FIRST)
    if waiter.done():
        return waiter.result()
    if protocol.closed.done():
        raise SubscriberError(protocol.error or "connection lost")
    protocol.fail(f"no {what} within {timeout_s} s")
    raise SubscriberError(f"no {what} within {timeout_s} s")


async def _keep_alive(protocol: SubscriberProtocol, keepalive_s: int) -> None:
    """PINGREQ every half keepalive; a broker silent for a whole keepalive is gone."""
    interval = keepalive_s / 2
    while True:
        await asyncio.wait((protocol.closed,), timeout=interval)
        if protocol.closed.done():
            raise SubscriberError(protocol.error or "connection lost")
        if protocol.paused:  # the broker's answers wait unread; the pause is ours
            protocol.last_heard = time.monotonic()
        elif time.monotonic() - protocol.last_heard > keepalive_s:
            protocol.fail(f"no answer from the broker for {keepalive_s} s")
            raise SubscriberError(protocol.error or "silent broker")
        protocol.ping()
