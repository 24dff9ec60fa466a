"""The MQTT bridge (`[bridges.mqtt]`, extra `mqtt`): edge devices meet the mesh through
a broker (MQTT 5, QoS 1). docs/bridges.md "MQTT" is the operator's view.

- in: messages on the telemetry filters become `telemetry` events on the node's stream
  (mqtt_telemetry.py), where patterns match them; a bad payload is counted, never raised;
- in: MQTT 5 requests on `<prefix>/calls/<node id>` (and the shared `<prefix>/calls`)
  are answered on their response topic with their correlation data (mqtt_calls.py);
- out: a retained `online` at `<prefix>/nodes/<node id>/status` (the last will, retained
  too, says `offline`; a clean stop says it itself), the retained announcement of this
  node's tools at `<prefix>/nodes/<node id>/tools` (republished when the tools change),
  and the events of the configured kinds at `<prefix>/alerts`, held in a bounded outbox
  while the broker is away.

One supervised loop (`bridge-mqtt`) connects, and reconnects with a doubling, jittered
backoff; a lost connection is pain on the algedonic channel (again every
`PAIN_REPEAT_S` while it lasts) and shows in `status()`. With `telemetry_connection =
"own"` (the default) telemetry comes over a second connection, MQTT 3.1.1, read by the
node's own subscriber (mqtt_subscriber.py: paho's reader was the bottleneck), in a second
supervised loop (`bridge-mqtt-telemetry`) with the same backoff and pain; the bridge is
`connected` only while both are. With `mqtts://` both connections use one TLS context
(mqtt_tls.py), built off the event loop before the first connection; a broker whose
certificate fails verification is a failed connection like any other (`down`, pain,
`last_error` saying why), retried with the same backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import ssl
import time
from collections import Counter, deque
from dataclasses import dataclass, replace
from typing import Any, Final, cast

import aiomqtt
import msgspec
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from vsmcp.node.bridges.model import BridgeContext, BridgeState, BridgeStatus
from vsmcp.node.bridges.mqtt_calls import ORIGIN_PREFIX, CallTopics, answer
from vsmcp.node.bridges.mqtt_config import MqttSection, broker_of
from vsmcp.node.bridges.mqtt_subscriber import SubscriberConfig, SubscriberError, run_session
from vsmcp.node.bridges.mqtt_telemetry import BadTelemetry, TelemetryDecoder
from vsmcp.node.bridges.mqtt_wire import Oversized, Publish
from vsmcp.node.errors import ConfigError
from vsmcp.node.mcp.protocol import OVERLOADED, Caller, McpCore, McpError, encode, error_message
from vsmcp.node.tools.model import CallContext
from vsmcp.node.vsm.events import NODE_CATALOG, Event, Telemetry

log = logging.getLogger(__name__)

NAME: Final = "mqtt"
QOS: Final = 1
ONLINE: Final = b"online"
OFFLINE: Final = b"offline"
BACKOFF_MIN_S: Final = 0.2
PAIN_SOURCE: Final = "bridge:mqtt"
PAIN_INTENSITY: Final = 0.6
PAIN_REPEAT_S: Final = 30.0
# A publish (QoS 1) waits this long for the broker's PUBACK; connecting too.
BROKER_TIMEOUT_S: Final = 10.0
# At a clean stop, saying `offline` may take this long (the will covers the rest).
OFFLINE_TIMEOUT_S: Final = 2.0
# After a failed publish of an alert, the writer waits this long before trying again.
WRITE_RETRY_S: Final = 1.0
# Received messages handled per turn of the event loop.
READ_BATCH: Final = 1024
# The telemetry connection reads on while the stream has this much room for telemetry
# events (a received chunk, ≤ 256 KiB, rarely gives more); else it pauses.
READ_ROOM: Final = 16_384
MAX_RESPONSE_TOPIC_CHARS: Final = 1024
MAX_CORRELATION_BYTES: Final = 1024
ALERTS_SUBSCRIBER: Final = "bridge-mqtt-alerts"


def create(section: MqttSection, context: BridgeContext) -> MqttBridge:
    section.check_zones(context.zones)
    return MqttBridge(section, context)


class Inbox(asyncio.Queue[aiomqtt.Message]):
    """The client's queue of received messages: bounded, and a message beyond the bound
    is counted (the client would log a warning for each) and dropped."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.dropped = 0

    def put_nowait(self, item: aiomqtt.Message) -> None:
        if self.full():
            self.dropped += 1
            return
        super().put_nowait(item)

    def take(self, batch: list[aiomqtt.Message], limit: int) -> None:
        """Move waiting messages into `batch`, up to `limit` in it."""
        while len(batch) < limit and not self.empty():
            batch.append(self.get_nowait())


@dataclass(slots=True)
class TelemetryLink:
    """The telemetry connection's state (telemetry_connection = "own")."""

    state: BridgeState = "connecting"
    was_connected: bool = False
    task: asyncio.Task[None] | None = None


class MqttBridge:
    name = NAME

    def __init__(self, section: MqttSection, context: BridgeContext) -> None:
        self._section = section
        self._ctx = context
        self._broker = broker_of(section.url)
        self._tls: ssl.SSLContext | None = None  # built at the first connection (mqtts://)
        self._tls_lock = asyncio.Lock()
        prefix, node = section.prefix, context.node_id
        self.status_topic = f"{prefix}/nodes/{node}/status"
        self.tools_topic = f"{prefix}/nodes/{node}/tools"
        self.alerts_topic = f"{prefix}/alerts"
        self.call_zone = section.call_zone or context.zones[0]
        grants = {f"{prefix}/calls/{node}": self.call_zone}
        if section.shared_calls:
            grants[f"$share/{prefix}/{prefix}/calls"] = self.call_zone
        grants.update(section.call_topics)
        self._calls = CallTopics(grants, context.zones)
        self._telemetry = TelemetryDecoder(section.telemetry_topics, section.max_telemetry_bytes)
        # Telemetry on its own connection (None: on the main one).
        self._telemetry_link: TelemetryLink | None = None
        self._telemetry_ready = True  # the stream had room when last asked
        if section.telemetry_connection == "own" and section.telemetry_topics:
            self._telemetry_link = TelemetryLink()
        self._core = McpCore(context.tools)
        self._inbox = Inbox(section.inbox)
        self._alerts: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._announce_due = True
        self._announced: bytes | None = None
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[None]] = set()
        self._running_calls = 0
        self._unsubscribe_tools: Any = None
        self._last_pain = -math.inf
        self._was_connected = False
        self._counters: Counter[str] = Counter()
        self._status = BridgeStatus(name=NAME, since=time.time())

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> MqttBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._task is not None:
            return
        kinds = [NODE_CATALOG.kinds[k].cls for k in self._section.alert_kinds]
        if kinds:
            self._ctx.events.subscribe(
                ALERTS_SUBSCRIBER, self._on_alerts, kinds=kinds, capacity=self._section.alert_outbox
            )
        on_change = getattr(self._ctx.tools, "on_change", None)
        if on_change is not None:
            self._unsubscribe_tools = on_change(self._tools_changed)
        self._task = self._ctx.loops.spawn("bridge-mqtt", self._run)
        if self._telemetry_link is not None:
            self._telemetry_link.task = self._ctx.loops.spawn(
                "bridge-mqtt-telemetry", self._run_telemetry
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        if self._client is not None:
            await self._say_offline(self._client)
        task.cancel()
        tasks = [task, *self._requests]
        if self._telemetry_link is not None and self._telemetry_link.task is not None:
            tasks.append(self._telemetry_link.task)
            self._telemetry_link.task = None
        for each in tasks:
            each.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._unsubscribe_tools is not None:
            self._unsubscribe_tools()
        await self._ctx.events.unsubscribe(ALERTS_SUBSCRIBER)
        self._set_state("stopped")

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        """Leaving a connection on purpose (a stop, a failed subscription) says `offline`
        itself: the broker sends the will only when a connection is lost."""
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(
                self.status_topic, OFFLINE, qos=QOS, retain=True, timeout=OFFLINE_TIMEOUT_S
            )

    def status(self) -> BridgeStatus:
        counters = dict(self._counters)
        counters["inbox_dropped"] = self._inbox.dropped
        state = self._status.state
        link = self._telemetry_link
        if link is not None and state == "connected" and link.state != "connected":
            state = link.state  # half a bridge is not connected
        return msgspec.structs.replace(
            self._status,
            state=state,
            outbox_depth=len(self._alerts),
            lag=self._inbox.qsize(),
            counters=counters,
        )

    # -- the connection ------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            self._was_connected = False
            try:
                await self._session(await self._tls_context())
            except (aiomqtt.MqttError, ConfigError) as e:
                self._down(str(e) or type(e).__name__)
            if self._was_connected:
                backoff = BACKOFF_MIN_S
            # Jittered, so a fleet that lost its broker does not come back all at once.
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, self._section.reconnect_max_s)

    async def _tls_context(self) -> ssl.SSLContext | None:
        """The connections' TLS context (None: mqtt://), read from its files once, off the
        event loop; a file gone bad since the config was read fails the attempt
        (`ConfigError` naming its key) and is read again at the next."""
        if not self._broker.tls:
            return None
        async with self._tls_lock:
            if self._tls is None:
                self._tls = await asyncio.to_thread(self._section.tls_context)
            return self._tls

    def _new_client(self, tls: ssl.SSLContext | None) -> aiomqtt.Client:
        broker, section = self._broker, self._section

        def queue_type(maxsize: int) -> Inbox:  # one bounded inbox across connections
            return self._inbox

        return aiomqtt.Client(
            broker.host,
            broker.port,
            username=broker.username,
            password=broker.password,
            identifier=section.client_id or f"vsmcp-{self._ctx.node_id}",
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(self.status_topic, OFFLINE, qos=QOS, retain=True),
            keepalive=section.keepalive_s,
            timeout=BROKER_TIMEOUT_S,
            queue_type=cast(Any, queue_type),
            tls_context=tls,
        )

    async def _session(self, tls: ssl.SSLContext | None) -> None:
        if self._status.state != "down":  # retries of an outage stay `down` (one pain, audit)
            self._set_state("connecting")
        client = self._new_client(tls)
        async with client:
            self._client = client
            writer: asyncio.Task[None] | None = None
            try:
                await client.publish(self.status_topic, ONLINE, qos=QOS, retain=True)
                shared = [] if self._telemetry_link else self._section.telemetry_topics
                for topic in (*shared, *self._calls.filters):
                    await self._subscribe(client, topic)
                self._was_connected = True
                self._set_state("connected")
                self._announced = None  # the broker may have lost it: say it again
                self._announce_due = True
                self._wake.set()
                writer = asyncio.create_task(self._write(client), name="bridge-mqtt-writer")
                await self._read(client)
            finally:
                self._client = None
                if writer is not None:
                    writer.cancel()
                    await asyncio.gather(writer, return_exceptions=True)
                # Still connected (a refused subscription, a stop): the clean disconnect
                # that follows sends no will. Lost connections fail at once here.
                await self._say_offline(client)

    async def _subscribe(self, client: aiomqtt.Client, topic: str) -> None:
        granted = await client.subscribe(topic, qos=QOS)
        refused = [
            code
            for code in granted
            if (code.is_failure if isinstance(code, ReasonCode) else code >= 0x80)
        ]
        if refused:
            self._error("subscribe_refused", f"the broker refused {topic!r}: {refused[0]}")

    def _set_state(self, state: BridgeState) -> None:
        if self._status.state == state:
            return
        previous = self._status.state
        self._status.state = state
        self._status.since = time.time()
        if state in ("connected", "down"):
            log.info("mqtt bridge %s (was %s)", state, previous)
            self._ctx.audit(f"bridge.mqtt.{state}", {"broker": self._broker_name()})

    def _broker_name(self) -> str:
        return f"{self._broker.host}:{self._broker.port}"

    def _down(self, reason: str) -> None:
        was = self._status.state
        self._error("disconnects", f"broker {self._broker_name()}: {reason}")
        self._set_state("down")
        link = self._telemetry_link
        other_down = link is not None and link.state == "down"
        self._pain(f"MQTT broker unreachable: {reason}", was != "down" and not other_down)

    def _pain(self, reason: str, new_outage: bool) -> None:
        """One pain per outage of the broker (both connections usually go at once), again
        every PAIN_REPEAT_S while it lasts."""
        now = time.monotonic()
        if new_outage or now - self._last_pain >= PAIN_REPEAT_S:
            self._last_pain = now
            self._ctx.pain(PAIN_SOURCE, PAIN_INTENSITY, reason)

    def _error(self, counter: str, message: str) -> None:
        self._counters[counter] += 1
        self._status.errors += 1
        self._status.last_error = message[:300]
        log.warning("mqtt bridge: %s", message)

    # -- in --------------------------------------------------------------------------------

    async def _read(self, client: aiomqtt.Client) -> None:
        # The iterator notices a lost connection; the batch is taken straight from the
        # inbox so that a flood costs one wake-up per batch, not per message.
        async for first in client.messages:
            batch = [first]
            self._inbox.take(batch, READ_BATCH)
            now = time.time()
            for message in batch:
                self._route(message, now)

    def _route(self, message: aiomqtt.Message, now: float) -> None:
        topic = message.topic.value
        payload = message.payload
        if not isinstance(payload, bytes):  # the client gives bytes; typed wider
            payload = str(payload).encode()
        if self._telemetry.matches(topic):
            self._take_telemetry(topic, payload, now)
            return
        zone = self._calls.zone_of(topic)
        if zone is None:
            self._counters["unexpected"] += 1
            return
        self._request(message, topic, payload, zone)

    def _take_telemetry(self, topic: str, payload: bytes, now: float) -> None:
        try:
            events = self._telemetry.decode(topic, payload, now)
        except BadTelemetry as e:
            self._bad_telemetry(topic, e)
            return
        publish = self._ctx.events.publish
        for event in events:
            publish(event)
        self._counters["telemetry_messages"] += 1
        self._counters["telemetry_events"] += len(events)

    def _bad_telemetry(self, topic: str, e: BadTelemetry) -> None:
        self._counters["telemetry_bad"] += 1
        self._error(f"telemetry_{e.reason}", f"telemetry on {topic[:200]!r}: {e}")

    # -- in: telemetry on its own connection --------------------------------------------

    async def _run_telemetry(self) -> None:
        link = self._telemetry_link
        assert link is not None
        broker, section = self._broker, self._section
        base = SubscriberConfig(
            host=broker.host,
            port=broker.port,
            username=broker.username,
            password=broker.password,
            client_id=f"{section.client_id or f'vsmcp-{self._ctx.node_id}'}-telemetry",
            filters=section.telemetry_topics,
            qos=QOS,
            max_payload=section.max_telemetry_bytes,
            keepalive_s=section.keepalive_s,
            timeout_s=BROKER_TIMEOUT_S,
        )
        backoff = BACKOFF_MIN_S
        while True:
            link.was_connected = False
            try:
                config = replace(base, tls=await self._tls_context())
                await run_session(
                    config,
                    self._on_publishes,
                    self._on_oversized,
                    self._telemetry_connected,
                    self._room_for_telemetry,
                )
            except (SubscriberError, ConfigError) as e:
                self._telemetry_down(link, str(e))
            if link.was_connected:
                backoff = BACKOFF_MIN_S
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, self._section.reconnect_max_s)

    def _on_publishes(self, batch: list[Publish]) -> None:
        """A received chunk's messages, in the turn they arrived (acknowledged after)."""
        now = time.time()
        take = self._take_telemetry
        for message in batch:
            take(message.topic, message.payload, now)

    def _room_for_telemetry(self) -> bool:
        """Reading pauses while the stream's buffers have little room for telemetry
        (the pattern engine behind): counted, so that a stalled consumer shows."""
        # A subscriber whose whole buffer is smaller than READ_ROOM: half of it, so that
        # it slows the intake instead of stopping it for good.
        events = self._ctx.events
        smallest = events.capacity(Telemetry)
        need = READ_ROOM if smallest > READ_ROOM else smallest // 2
        ready = events.room(Telemetry) >= need
        if not ready and self._telemetry_ready:
            self._counters["telemetry_pauses"] += 1
        self._telemetry_ready = ready
        return ready

    def _on_oversized(self, batch: list[Oversized]) -> None:
        cap = self._section.max_telemetry_bytes
        for message in batch:
            why = BadTelemetry("oversized", f"{message.size} bytes (max {cap})")
            self._bad_telemetry(message.topic, why)

    def _telemetry_connected(self) -> None:
        link = self._telemetry_link
        assert link is not None
        link.was_connected = True
        if link.state != "connected":
            link.state = "connected"
            log.info("mqtt bridge: telemetry connection up")
            self._ctx.audit("bridge.mqtt.telemetry_connected", {"broker": self._broker_name()})

    def _telemetry_down(self, link: TelemetryLink, reason: str) -> None:
        was = link.state
        self._error("telemetry_disconnects", f"telemetry, broker {self._broker_name()}: {reason}")
        link.state = "down"
        if was != "down":
            self._ctx.audit("bridge.mqtt.telemetry_down", {"broker": self._broker_name()})
        new_outage = was != "down" and self._status.state != "down"
        self._pain(f"MQTT telemetry connection lost: {reason}", new_outage)

    def _request(self, message: aiomqtt.Message, topic: str, payload: bytes, zone: str) -> None:
        self._counters["requests"] += 1
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        refusal = self._refuse_response_topic(response_topic, correlation)
        if refusal is not None:
            self._error("requests_unanswerable", f"request on {topic[:200]!r}: {refusal}")
            return
        assert isinstance(response_topic, str)
        if len(self._requests) >= 2 * self._section.max_concurrent_calls:
            self._counters["requests_dropped"] += 1
            return
        task = asyncio.create_task(
            self._serve(topic, payload, zone, response_topic, correlation),
            name="bridge-mqtt-request",
        )
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    def _refuse_response_topic(self, topic: object, correlation: object) -> str | None:
        """Why no answer can be sent, or None. A response topic we read ourselves is
        refused too: the answer would come back as input."""
        if not isinstance(topic, str) or not topic:
            return "no response topic (MQTT 5 property), so no answer can be sent"
        if len(topic) > MAX_RESPONSE_TOPIC_CHARS or any(c in topic for c in "+#\0"):
            return "the response topic is not a topic one can publish to"
        if topic.startswith("$") or self._telemetry.matches(topic):
            return "the response topic is one this node reads"
        if self._calls.zone_of(topic) is not None:
            return "the response topic is one this node reads"
        if correlation is not None and (
            not isinstance(correlation, bytes) or len(correlation) > MAX_CORRELATION_BYTES
        ):
            return f"correlation data over {MAX_CORRELATION_BYTES} bytes"
        return None

    async def _serve(
        self,
        topic: str,
        payload: bytes,
        zone: str,
        response_topic: str,
        correlation: bytes | None,
    ) -> None:
        if self._running_calls >= self._section.max_concurrent_calls:
            self._counters["requests_overloaded"] += 1
            reply: dict[str, Any] | None = error_message(
                None,
                McpError(
                    OVERLOADED,
                    "Overloaded: too many MQTT requests running; retry later",
                    {"limit": "mqtt-concurrent-calls", "retry_after_s": 1},
                ),
            )
        else:
            origin = ORIGIN_PREFIX + topic
            caller = Caller(caller_id=origin, zone=zone, origin=origin)
            self._running_calls += 1
            try:
                reply = await answer(self._core, caller, payload, self._section.max_call_bytes)
            finally:
                self._running_calls -= 1
        if reply is None:
            return
        if "error" in reply:
            self._counters["error_replies"] += 1
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if correlation is not None:
            props.CorrelationData = correlation
        client = self._client
        if client is None:
            self._error("replies_lost", f"no broker connection to answer on {response_topic!r}")
            return
        try:
            await client.publish(response_topic, encode(reply), qos=QOS, properties=props)
        except aiomqtt.MqttError as e:
            self._error("replies_lost", f"answer on {response_topic!r} not sent: {e}")
            return
        self._counters["replies"] += 1

    # -- out -------------------------------------------------------------------------------

    def _on_alerts(self, batch: list[Event]) -> None:
        node, name, cap = self._ctx.node_id, self._ctx.node_name, self._section.alert_outbox
        for event in batch:
            if len(self._alerts) >= cap:
                self._alerts.popleft()
                self._counters["alerts_dropped"] += 1
            self._alerts.append(msgspec.json.encode({"node": node, "name": name, "event": event}))
        self._wake.set()

    def _tools_changed(self) -> None:
        self._announce_due = True
        self._wake.set()

    def announcement(self) -> bytes:
        """This node's tools as a caller on its call topics sees them (retained)."""
        origin = ORIGIN_PREFIX + self.tools_topic
        ctx = CallContext(caller_id=origin, caller_zone=self.call_zone, origin=origin)
        specs = self._ctx.tools.local.list_tools(ctx)
        return msgspec.json.encode(
            {
                "node": self._ctx.node_id,
                "name": self._ctx.node_name,
                "zone": self.call_zone,
                "calls": f"{self._section.prefix}/calls/{self._ctx.node_id}",
                "tools": [spec.to_mcp() for spec in specs],
            }
        )

    async def _write(self, client: aiomqtt.Client) -> None:
        """Publishes the announcement when due and the alerts in order; an alert leaves
        the outbox only once the broker has acknowledged it."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            announcing = self._announce_due
            self._announce_due = False  # a change while publishing sets it again
            try:
                if announcing:
                    payload = self.announcement()
                    if payload != self._announced:
                        await client.publish(self.tools_topic, payload, qos=QOS, retain=True)
                        self._announced = payload
                        self._counters["announcements"] += 1
                    announcing = False
                while self._alerts:
                    await client.publish(self.alerts_topic, self._alerts[0], qos=QOS)
                    self._alerts.popleft()
                    self._counters["alerts_published"] += 1
            except aiomqtt.MqttError as e:
                self._error("publish_failed", f"publish: {e}")
                self._announce_due = self._announce_due or announcing
                await asyncio.sleep(WRITE_RETRY_S)
                self._wake.set()
