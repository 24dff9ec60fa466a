"""The AMQP bridge (`[bridges.amqp]`, aio-pika): events out, tool calls in.

Out: events of the configured kinds, and the node's local tools whenever they change
(`<node id>.capabilities`), go to the topic exchange `vsmcp.events` with routing key
`<node id>.<event kind>`, persistent, each confirmed by the broker. They pass through
the node's SQLite first (`outbox.py`): the stream's subscriber appends each batch, one
sender publishes the oldest entries and deletes them once the broker confirmed them. So
an outage (or a kill -9) loses nothing within `outbox_capacity`; after it the entries
leave in order. Delivery is at least once: an entry sent but not confirmed when the
connection dropped is sent again. `message_id` is `<node id>:<seq>` and the headers
carry `node` and `seq`, so a consumer can drop repeats (by the set of `seq`s seen, per
node). An entry the broker refuses (a bound queue full with `reject-publish`) is sent
again after a backoff on the same connection (`_send_outbox`); the queue that refused
it may have taken later ones first.

In: `amqp_calls.py` (JSON-RPC `tools/call` from `vsmcp.calls` and
`vsmcp.calls.<node id>`).

The connection is this bridge's own supervised loop (`bridge-amqp`): connect, declare,
serve until the connection or a channel closes, then reconnect with a backoff. An
unreachable broker is never a crash: it is state `down`, a `unit_state` event, errors in
the status, and pain on the algedonic channel once it lasts `pain_after_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any, Final

import aio_pika
import aiormq
import aiormq.exceptions
import msgspec
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage, FieldTable
from pamqp import commands as spec

from vsmcp.mesh.service import Service
from vsmcp.node.bridges.amqp_acks import Acks
from vsmcp.node.bridges.amqp_answers import REMEMBER_FOR_S, AnswersUnreadable
from vsmcp.node.bridges.amqp_calls import CallMessage, CallServer, ZoneMap
from vsmcp.node.bridges.amqp_config import CAPABILITIES_KIND, AmqpSection
from vsmcp.node.bridges.amqp_publish import BROKER_ERRORS, BatchConfirms, Outgoing, publish_many
from vsmcp.node.bridges.amqp_replies import Replies
from vsmcp.node.bridges.model import BridgeContext, BridgeState, BridgeStatus
from vsmcp.node.bridges.outbox import Outbox, OutboxEntry
from vsmcp.node.vsm.events import NODE_EVENT_TYPES, Event, RegistryChanged, UnitStateChanged

log = logging.getLogger(__name__)

NAME: Final = "amqp"
UNIT: Final = "bridge:amqp"
# Outbox entries sent per write, all in flight at once on the confirm channel; the next
# batch goes out while the broker confirms one (it works meanwhile, so does the node).
PUBLISH_BATCH: Final = 1_000
IN_FLIGHT_BATCHES: Final = 2
PUBLISH_TIMEOUT_S: Final = 30.0
CONNECT_TIMEOUT_S: Final = 5.0
RECONNECT_MIN_S: Final = 0.2
RECONNECT_MAX_S: Final = 5.0
# After the broker refused outbox entries (nack), the pause before sending them again.
NACK_RETRY_MIN_S: Final = 0.2
NACK_RETRY_MAX_S: Final = 5.0
# Dead letters (calls that cannot be answered): a fanout exchange into one bounded queue.
DEAD_LETTER_EXCHANGE: Final = "vsmcp.dead"
DEAD_LETTER_QUEUE: Final = "vsmcp.dead"
DEAD_LETTER_MAX: Final = 10_000
# As long as its answers are remembered: a call redelivered on it is never run again
# for want of its answer's age.
PINNED_QUEUE_EXPIRES_MS: Final = int(REMEMBER_FOR_S * 1000)
# Overflow of the outbox is audited at most this often (a flood is one entry a second).
OVERFLOW_AUDIT_INTERVAL_S: Final = 1.0
PAIN_INTENSITY: Final = 0.8


_TAGS: Final[dict[type[Event], str]] = {
    cls: str(cls.__struct_config__.tag) for cls in NODE_EVENT_TYPES
}
_encode = msgspec.json.Encoder().encode


class AmqpBridge(Service):
    name = NAME

    def __init__(self, section: AmqpSection, context: BridgeContext) -> None:
        self._section = section
        self._context = context
        self._node_id = context.node_id
        self._kinds = frozenset(section.events)
        zones = ZoneMap(
            default=section.default_zone or context.zones[0],
            users=dict(section.user_zones),
            queues=dict(section.queue_zones),
        )
        self._calls = CallServer(context.tools, zones, section.max_message_bytes)
        self._outbox: Outbox | None = None
        self._task: asyncio.Task[None] | None = None
        self._state: BridgeState = "connecting"
        self._since = time.time()
        self._errors = 0
        self._last_error = ""
        self._published = 0
        self._connects = 0
        self._announcements = 0
        # Monotonic time the broker was last lost (or first tried); None while connected.
        self._down_since: float | None = time.monotonic()
        self._pained = False
        self._overflow_audited_at = 0.0
        # The calls channel's acks, while connected; ack frames sent on earlier channels.
        self._acks: Acks | None = None
        self._ack_frames = 0
        # The replies of the calls, while connected; reply writes on earlier channels.
        self._replies: Replies | None = None
        # The channel the calls are consumed on, while connected.
        self._calls_channel: AbstractChannel | None = None
        self._reply_writes = 0
        # Answers the broker refused (nacked); their calls are acked all the same.
        self._answers_refused = 0
        # Outbox entries the broker refused (nacked); since when the outbox has made no
        # progress because of them (None while it moves), and whether that was pain.
        self._nacks = 0
        self._stalled_since: float | None = None
        self._stall_pained = False
        self._register_metrics()

    def _register_metrics(self) -> None:
        # Here, not in `start`: one registration per bridge, however often it restarts.
        self._context.metrics.add_counters(
            "vsmcp_amqp_refused",
            "Messages the AMQP broker refused (nack): answers a caller's reply queue "
            "refused (their calls acked all the same), outbox entries a full bound queue "
            "refused (sent again after a backoff)",
            "message",
            lambda: {"answer": self._answers_refused, "outbox": self._nacks},
            known=("answer", "outbox"),
        )

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._outbox = await Outbox.open(self._context.store, NAME, self._section.outbox_capacity)
        try:
            await self._calls.open(self._context.store)
        except AnswersUnreadable as exc:
            # A broken table is pain, not a node that cannot start: the calls are still
            # answered, remembered in memory only (a redelivery after a restart runs again).
            log.error("AMQP bridge: %s; answers remembered in memory only", exc)
            self._error(str(exc))
            self._context.pain(UNIT, PAIN_INTENSITY, f"{exc}: answers remembered in memory only")
        kinds = {cls for cls, tag in _TAGS.items() if tag in self._kinds}
        if self._section.announce:
            kinds.add(RegistryChanged)
            await self._append([self._announcement()])
        self._context.events.subscribe(f"bridge-{NAME}", self._on_events, kinds=kinds)
        self._task = self._context.loops.spawn(f"bridge-{NAME}", self._run)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # What the stream still buffers for us goes into the outbox (kept for next start).
        await self._context.events.unsubscribe(f"bridge-{NAME}")
        task.cancel()
        await asyncio.wait({task})
        if self._outbox is not None:
            await self._outbox.close()
        await self._calls.close()
        self._report_overflow(force=True)
        self._set_state("stopped", "bridge stopped")

    def status(self) -> BridgeStatus:
        outbox = self._outbox
        depth = self._outbox_depth()
        counters = {
            "published": self._published,
            "connects": self._connects,
            "announcements": self._announcements,
            "ack_frames": self._ack_frames + (self._acks.frames if self._acks else 0),
            "reply_writes": self._reply_writes + (self._replies.writes if self._replies else 0),
            "outbox_overflowed": outbox.overflowed if outbox is not None else 0,
            "answers_refused": self._answers_refused,
            "nacks": self._nacks,
            **self._calls.counters.view(),
            "answers_remembered": len(self._calls.answers),
            "answers_not_remembered": self._calls.answers.not_remembered,
            "answer_writes": self._calls.answers.writes,
            "remembered_rows_refused": self._calls.answers.refused_rows,
        }
        return BridgeStatus(
            name=NAME,
            state=self._state,
            outbox_depth=depth,
            lag=depth,
            errors=self._errors,
            last_error=self._last_error,
            since=self._since,
            counters=counters,
        )

    # -- events into the outbox ----------------------------------------------------------

    async def _on_events(self, batch: list[Event]) -> None:
        entries: list[tuple[str, bytes]] = []
        announce = False
        node_id, kinds = self._node_id, self._kinds
        for event in batch:
            tag = _TAGS.get(type(event))
            if tag is None:
                continue
            if type(event) is RegistryChanged and event.provider == node_id:
                announce = self._section.announce
            if tag in kinds:
                entries.append((f"{node_id}.{tag}", _encode(event)))
        if announce:
            entries.append(self._announcement())
        await self._append(entries)

    def _announcement(self) -> tuple[str, bytes]:
        """The node's local tools, as MCP `Tool` objects (not the offers tools)."""
        self._announcements += 1
        local = self._context.tools.local.client_tools()
        body = {
            "kind": CAPABILITIES_KIND,
            "ts": time.time(),
            "node": self._node_id,
            "name": self._context.node_name,
            "tools": [tool.to_mcp() for tool in local],
        }
        return f"{self._node_id}.{CAPABILITIES_KIND}", _encode(body)

    async def _append(self, entries: list[tuple[str, bytes]]) -> None:
        outbox = self._outbox
        if outbox is None or not entries:
            return
        try:
            await outbox.append(entries)
        except sqlite3.Error as exc:
            self._error(f"outbox write failed, {len(entries)} events lost: {exc}")
            self._context.audit(
                "bridge.outbox_failed",
                {"bridge": NAME, "lost": len(entries), "error": str(exc)[:300]},
            )
        self._report_overflow()

    def _report_overflow(self, *, force: bool = False) -> None:
        outbox = self._outbox
        now = time.monotonic()
        if outbox is None or not (
            force or now - self._overflow_audited_at >= OVERFLOW_AUDIT_INTERVAL_S
        ):
            return
        dropped = outbox.take_overflow()
        if not dropped:
            return
        self._overflow_audited_at = now
        self._error(f"outbox full ({outbox.capacity} entries): {dropped} events dropped")
        self._context.audit(
            "bridge.outbox_overflow",
            {"bridge": NAME, "dropped": dropped, "capacity": outbox.capacity},
        )

    # -- the connection ------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = RECONNECT_MIN_S
        while True:
            connected_before = self._connects
            try:
                await self._session()
                reason = "connection closed"
            except BROKER_ERRORS as exc:
                reason = f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__
            self._lost(reason)
            if self._connects != connected_before:
                backoff = RECONNECT_MIN_S
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX_S)

    async def _session(self) -> None:
        connection = await aio_pika.connect(
            self._section.url,
            timeout=CONNECT_TIMEOUT_S,
            client_properties={"connection_name": f"vsmcp {self._node_id}"},
        )
        workers: list[asyncio.Task[None]] = []
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.declare_exchange(
                self._section.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            # Publishing on aiormq's channel under aio-pika's: no `aio_pika.Message` per
            # entry and no wait for the socket per publish (the confirms bound what is
            # in flight): about a fifth less CPU per call (docs/benchmarks.md).
            raw = await channel.get_underlay_channel()
            assert isinstance(raw, aiormq.Channel)
            watched: list[Awaitable[Any]] = [connection.closed(), channel.closed()]
            if self._section.calls:
                watched.append(await self._consume_calls(connection, raw))
            self._connected()
            workers.append(asyncio.create_task(self._send_outbox(raw), name="bridge-amqp-send"))
            workers.extend(asyncio.ensure_future(w) for w in watched)
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and (error := task.exception()) is not None:
                    raise error
        finally:
            for task in workers:
                task.cancel()
            if workers:
                await asyncio.wait(workers)
            # The consumers first (closing their channel cancels the deliveries' tasks:
            # no new answer or ack), then the answers (a refused one settles nothing
            # more), then the acks their confirms feed; each refuses work once closed.
            calls, self._calls_channel = self._calls_channel, None
            if calls is not None:
                with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                    await asyncio.wait_for(calls.close(), CONNECT_TIMEOUT_S)
            replies, self._replies = self._replies, None
            if replies is not None:
                await replies.close()
                self._reply_writes += replies.writes
            acks, self._acks = self._acks, None
            if acks is not None:
                await acks.close()
                self._ack_frames += acks.frames
            with contextlib.suppress(*BROKER_ERRORS, RuntimeError):
                await asyncio.wait_for(connection.close(), CONNECT_TIMEOUT_S)

    async def _consume_calls(
        self, connection: AbstractConnection, replies: aiormq.Channel
    ) -> Awaitable[Any]:
        """Declare the call queues and consume them; returns the calls channel's closure."""
        channel = await connection.channel(publisher_confirms=False)
        self._calls_channel = channel
        await channel.set_qos(prefetch_count=self._section.prefetch)
        dead = await channel.declare_exchange(
            DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_queue = await channel.declare_queue(
            DEAD_LETTER_QUEUE, durable=True, arguments={"x-max-length": DEAD_LETTER_MAX}
        )
        await dead_queue.bind(dead)
        arguments: FieldTable = {"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE}
        replier = Replies(replies)
        self._replies = replier
        raw = await channel.get_underlay_channel()
        assert isinstance(raw, aiormq.Channel)
        acks = Acks(raw, lambda e: self._error(f"acks not sent: {type(e).__name__}: {e}"))
        self._acks = acks
        shared = self._section.calls_queue
        # The pinned queue outlives a restart of its node, not its node: unused (no
        # consumer) for a day, the broker deletes it.
        pinned_arguments: FieldTable = {**arguments, "x-expires": PINNED_QUEUE_EXPIRES_MS}
        for name, args in ((shared, arguments), (f"{shared}.{self._node_id}", pinned_arguments)):
            await channel.declare_queue(name, durable=True, arguments=args)
            # On aiormq's channel: no aio-pika message object and task per delivery.
            await raw.basic_consume(name, self._call_consumer(name, raw, replier, acks))
        return channel.closed()

    def _call_consumer(
        self, name: str, channel: aiormq.Channel, replies: Replies, acks: Acks
    ) -> Any:
        async def consume(message: DeliveredMessage) -> None:
            delivery = message.delivery
            assert isinstance(delivery, spec.Basic.Deliver)  # a consumer gets deliveries
            tag = delivery.delivery_tag
            assert tag is not None  # consumed with acks
            props = message.header.properties
            reply_to = props.reply_to
            call = CallMessage(
                message.body, reply_to, props.message_id, props.user_id, props.correlation_id
            )
            acks.track(tag)
            try:
                answer = await self._calls.serve(call, name)
                if answer is None or not reply_to:
                    await channel.basic_reject(tag, requeue=False, wait=False)
                    acks.settled_elsewhere(tag)
                    return
            except BROKER_ERRORS as exc:
                # The connection dropped: unacked, the call comes back (and is answered
                # from memory, not run again).
                acks.forget(tag)
                self._error(f"call on {name} not settled: {type(exc).__name__}: {exc}")
                return
            except BaseException:
                acks.forget(tag)
                raise

            def confirmed(error: BaseException | None) -> None:
                if error is None:
                    acks.ack(tag)
                    return
                if isinstance(error, aiormq.exceptions.DeliveryError):
                    # The broker refused the answer (`basic.nack`: the caller's reply
                    # queue is full with `reject-publish`, say). The call ran; the
                    # caller's own queue refused its answer. Acked, it frees its
                    # prefetch slot: left unacked, `prefetch` such calls would stop
                    # the node taking calls from anyone for the connection's life.
                    acks.ack(tag)
                    self._answers_refused += 1
                    self._error(f"answer on {name} refused by the broker (call acked)")
                    return
                # The channel is gone: unacked, the call comes back (answered from memory).
                acks.forget(tag)
                self._error(f"answer on {name} not confirmed: {type(error).__name__}: {error}")

            replies.reply(reply_to, props.correlation_id, answer, confirmed)

        return consume

    async def _send_outbox(self, channel: aiormq.Channel) -> None:
        """Publish the outbox in order: a batch in one write, every confirm outstanding
        at once, and the next batch sent while the broker confirms this one
        (`IN_FLIGHT_BATCHES`); each batch is removed once all of it is confirmed, oldest
        first. A timeout (or an OSError, a closed channel) ends the session: what was
        not confirmed stays and is sent again after the reconnect.

        An entry the broker refuses (`basic.nack`: a queue bound to the exchange is full
        with `reject-publish`) does not end the session (a reconnect would redeliver
        every call in flight and change nothing): what was confirmed before it is
        removed, and after a backoff (`NACK_RETRY_MIN_S` doubling to `NACK_RETRY_MAX_S`)
        the sender starts again from it, in order. The entries after it that the broker
        had confirmed are sent again (at least once: a consumer drops the repeats by the
        set of `seq`s it saw, per node). Not a high-water mark: the refusing queue can
        take k+1..n after refusing k (a slot freed meanwhile), so its consumer may see
        k+1..n, then k, k+1..n. No progress for `pain_after_s` is pain."""
        outbox = self._outbox
        assert outbox is not None
        in_flight: deque[tuple[list[OutboxEntry], BatchConfirms]] = deque()
        sent_through = 0
        retry = NACK_RETRY_MIN_S
        try:
            while True:
                if len(in_flight) < IN_FLIGHT_BATCHES:
                    outbox.ready.clear()
                    batch = await outbox.peek(PUBLISH_BATCH, after=sent_through)
                    if batch:
                        outgoing = [self._outgoing(entry) for entry in batch]
                        confirms = BatchConfirms(channel, len(outgoing))
                        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                            await publish_many(channel, outgoing, confirms)
                        in_flight.append((batch, confirms))
                        sent_through = batch[-1].seq
                        continue
                if not in_flight:
                    await outbox.ready.wait()
                    continue
                batch, confirms = in_flight[0]
                async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                    refused = await confirms.future
                in_flight.popleft()
                taken = len(batch) if refused is None else refused
                if taken:
                    self._published += taken  # confirmed, even if the removal is cut short
                    await outbox.remove_through(batch[taken - 1].seq)
                    self._outbox_progressed()
                if refused is None:
                    retry = NACK_RETRY_MIN_S
                    continue
                # Refused: the batches behind it are dropped (their confirms ignored)
                # and everything from the refused entry is sent again, after a pause.
                for _, later in in_flight:
                    later.future.cancel()
                in_flight.clear()
                sent_through = batch[refused].seq - 1
                self._outbox_refused(confirms.nacked)
                await asyncio.sleep(retry)
                retry = min(retry * 2, NACK_RETRY_MAX_S)
        finally:
            for _, confirms in in_flight:
                confirms.future.cancel()

    def _outbox_progressed(self) -> None:
        self._stalled_since = None
        self._stall_pained = False

    def _outbox_refused(self, nacked: int) -> None:
        """The broker refused outbox entries: count them; pain once the outbox has made
        no progress for `pain_after_s`."""
        self._nacks += nacked
        now = time.monotonic()
        if self._stalled_since is None:
            self._stalled_since = now
        stalled_for = now - self._stalled_since
        self._error(f"broker refused {nacked} events (a bound queue full?): sent again")
        if not self._stall_pained and stalled_for >= self._section.pain_after_s:
            self._stall_pained = True
            self._context.pain(
                UNIT,
                PAIN_INTENSITY,
                f"AMQP broker refused the outbox for {stalled_for:.0f} s "
                f"({self._outbox_depth()} events waiting)",
            )

    def _outbox_depth(self) -> int:
        return self._outbox.depth if self._outbox is not None else 0

    def _outgoing(self, entry: OutboxEntry) -> Outgoing:
        return Outgoing(
            entry.key,
            entry.body,
            exchange=self._section.exchange,
            message_id=f"{self._node_id}:{entry.seq}",
            app_id="vsmcp",
            persistent=True,
            headers={"node": self._node_id, "seq": entry.seq},
        )

    # -- state ---------------------------------------------------------------------------

    def _connected(self) -> None:
        self._connects += 1
        self._down_since = None
        self._pained = False
        self._set_state("connected", "")
        log.info("AMQP bridge connected")

    def _lost(self, reason: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("AMQP bridge lost the broker: %s", reason)
        self._error(reason)
        self._set_state("down", reason)
        down_for = time.monotonic() - self._down_since
        if not self._pained and down_for >= self._section.pain_after_s:
            self._pained = True
            self._context.pain(
                UNIT, PAIN_INTENSITY, f"AMQP broker unreachable for {down_for:.0f} s: {reason}"
            )

    def _error(self, reason: str) -> None:
        self._errors += 1
        self._last_error = reason

    def _set_state(self, state: BridgeState, reason: str) -> None:
        previous = self._state
        if state == previous:
            return
        self._state = state
        self._since = time.time()
        self._context.events.publish(
            UnitStateChanged(
                ts=self._since, unit=UNIT, state=state, previous=previous, reason=reason or None
            )
        )
