"""The AMQP bridge in a real `vsmcpd` against the real RabbitMQ, with plain aio-pika
clients on the other side (not our code).

- A `tools/call` sent to the shared queue `vsmcp.calls` (and to the pinned
  `vsmcp.calls.<node id>`) is answered to its `reply_to` with its `correlation_id`.
- Bad input (non-JSON, oversized, unknown tool, a zone the mapping does not grant, no
  `reply_to`) gets a JSON-RPC error answer or is dead-lettered; nothing is redelivered,
  the node keeps serving.
- `rabbitmqctl close_all_connections` in the middle of 10,000 calls: every call is
  answered, run once (exactly 10,000 `tool_call` events), and the events consumer gets
  every one, in order.
- kill -9 of a node whose broker is unreachable, with events in its outbox: after a
  restart with the broker back, the outbox is flushed to the exchange, in order; the
  outage was pain on the algedonic channel and `down` in `/api/vsm`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import shutil
import socket
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import NodeProcess, call_tool, run_daemon
from tests.integration.harness import counters as metric_counts
from tests.integration.tcp_proxy import TcpProxy
from tests.polling import async_wait_for, async_wait_until, wait_for
from tests.skips import require_rabbitmq, skip_or_fail
from vsmcp.node.mcp.protocol import INVALID_PARAMS, PARSE_ERROR, TOO_LARGE, ZONE_DENIED

pytestmark = pytest.mark.integration

TOKEN = "amqp-test-token-0123456789"
MAX_BYTES = 4096


def _config(
    url: str,
    *,
    calls_queue: str = "vsmcp.calls",
    events: tuple[str, ...] = ("tool_call",),
    extra: str = "",
) -> str:
    kinds = ", ".join(json.dumps(k) for k in events)
    return f"""
[tools]
entry_points = false
[[mcp.tokens]]
name = "tester"
token = "{TOKEN}"
zone = "public"
[bridges.amqp]
url = "{url}"
calls_queue = "{calls_queue}"
events = [{kinds}]
max_message_bytes = {MAX_BYTES}
pain_after_s = 1.0
{extra}
"""


def _start(data_dir: Path, config: str) -> NodeProcess:
    path = data_dir.parent / f"{data_dir.name}.toml"
    path.write_text(config)
    return NodeProcess(data_dir, "--config", str(path)).start()


def _amqp(node: NodeProcess) -> dict[str, Any]:
    bridges: dict[str, Any] = node.get_json("/api/vsm")["bridges"]
    return bridges["amqp"]  # type: ignore[no-any-return]


def _wait_connected(node: NodeProcess) -> dict[str, Any]:
    return wait_for(
        lambda: (s := _amqp(node)) and s["connected"] and s,
        timeout_s=30,
        what="the AMQP bridge connected",
    )


@pytest.fixture
async def broker() -> AsyncIterator[Any]:
    """A plain aio-pika connection to the test broker."""
    url = require_rabbitmq()
    import aio_pika

    connection = await aio_pika.connect_robust(url)
    try:
        yield connection
    finally:
        await connection.close()


class Caller:
    """A plain aio-pika RPC client: an exclusive reply queue, answers by correlation id."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.answers: dict[str, dict[str, Any]] = {}
        self.reply_queue: Any = None

    async def open(self) -> Caller:
        self.reply_queue = await self.channel.declare_queue(exclusive=True)

        async def on_reply(message: Any) -> None:
            async with message.process():
                self.answers[message.correlation_id] = json.loads(message.body)

        await self.reply_queue.consume(on_reply)
        return self

    async def send(
        self,
        queue: str,
        body: bytes,
        *,
        reply: bool = True,
        message_id: str | None = None,
    ) -> str:
        import aio_pika

        correlation_id = uuid.uuid4().hex
        message = aio_pika.Message(
            body,
            correlation_id=correlation_id,
            reply_to=self.reply_queue.name if reply else None,
            message_id=message_id or uuid.uuid4().hex,
            content_type="application/json",
        )
        await self.channel.default_exchange.publish(message, routing_key=queue)
        return correlation_id

    async def answer(self, correlation_id: str, timeout_s: float = 30) -> dict[str, Any]:
        await async_wait_until(
            lambda: correlation_id in self.answers, timeout_s=timeout_s, what="an AMQP answer"
        )
        return self.answers[correlation_id]


def _call(tool: str, arguments: dict[str, Any], request_id: int = 1) -> bytes:
    request = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    return json.dumps(request).encode()


def _unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


async def _serving(
    tmp_path: Path, broker: Any, nodes: list[NodeProcess], extra: str = ""
) -> tuple[NodeProcess, str, Any]:
    """A node serving a call queue of the test's own, connected; a client channel."""
    queue = _unique("vsmcp.test.calls")
    node = _start(tmp_path / "n", _config(require_rabbitmq(), calls_queue=queue, extra=extra))
    nodes.append(node)
    _wait_connected(node)
    return node, queue, await broker.channel()


async def test_a_plain_client_calls_a_tool_through_the_shared_and_pinned_queues(
    tmp_path: Path, broker: Any, nodes: list[NodeProcess]
) -> None:
    url = require_rabbitmq()
    node = _start(tmp_path / "n", _config(url))
    nodes.append(node)
    _wait_connected(node)
    channel = await broker.channel()
    caller = await Caller(channel).open()
    for queue in ("vsmcp.calls", f"vsmcp.calls.{node.node_id}"):
        sent = await caller.send(queue, _call("echo", {"text": f"via {queue}"}, request_id=7))
        answer = await caller.answer(sent)
        assert answer["id"] == 7
        assert answer["result"]["content"][0]["text"] == f"via {queue}"
        assert answer["result"]["isError"] is False
    counters = _amqp(node)["counters"]
    assert counters["calls_answered"] == 2 and counters["calls_error_answers"] == 0
    metrics = node.get("/metrics")[1].decode()
    assert 'vsmcp_bridge_connected{bridge="amqp"} 1.0' in metrics
    await channel.queue_delete(f"vsmcp.calls.{node.node_id}")


async def test_bad_input_is_answered_or_dead_lettered_never_redelivered(
    tmp_path: Path, broker: Any, nodes: list[NodeProcess]
) -> None:
    node, queue, channel = await _serving(tmp_path, broker, nodes)
    caller = await Caller(channel).open()

    not_json = await caller.answer(await caller.send(queue, b"{not json"))
    assert not_json["error"]["code"] == PARSE_ERROR and not_json["id"] is None

    big = _call("echo", {"text": "x" * (MAX_BYTES * 2)})
    too_large = await caller.answer(await caller.send(queue, big))
    assert too_large["error"]["code"] == TOO_LARGE
    assert too_large["error"]["data"]["max_bytes"] == MAX_BYTES

    unknown = await caller.answer(await caller.send(queue, _call("no.such.tool", {}, 3)))
    assert unknown["error"]["code"] == INVALID_PARAMS and unknown["id"] == 3
    assert unknown["error"]["data"]["reason"] == "unknown_tool"
    # an offers tool (the node's status resource) is no tool to a caller either
    read = _call("vsm.mcp.node", {"method": "resources/list", "params": {}}, 5)
    offers = await caller.answer(await caller.send(queue, read))
    assert (offers["id"], offers["error"]["data"]["reason"]) == (5, "unknown_tool")

    # The default zone is the lowest (public); vsm.signal is a restricted tool.
    signal = {"valence": "pain", "intensity": 0.1, "reason": "test"}
    denied = await caller.answer(await caller.send(queue, _call("vsm.signal", signal, 4)))
    assert denied["error"]["code"] == ZONE_DENIED and denied["id"] == 4

    # No reply_to: nobody to answer, so it is not run but dead-lettered.
    marker = uuid.uuid4().hex
    await caller.send(queue, _call("echo", {"text": "orphan"}), reply=False, message_id=marker)
    dead = await channel.declare_queue("vsmcp.dead", passive=True)

    async def dead_lettered() -> bool:
        while (message := await dead.get(no_ack=True, fail=False)) is not None:
            if message.message_id == marker:
                return True
        return False

    await async_wait_for(
        dead_lettered, timeout_s=10, what="the call without reply_to in vsmcp.dead"
    )

    # Still serving, and nothing came back for another round.
    fine = await caller.answer(await caller.send(queue, _call("echo", {"text": "ok"}, 9)))
    assert fine["result"]["content"][0]["text"] == "ok"
    counters = _amqp(node)["counters"]
    assert counters["calls_received"] == 7
    assert counters["calls_dead_lettered"] == 1
    assert counters["calls_error_answers"] == 5
    assert counters["calls_duplicates"] == 0
    declared = await channel.declare_queue(queue, passive=True)
    assert declared.declaration_result.message_count == 0
    assert node.proc is not None and node.proc.poll() is None
    await _delete_call_queues(channel, queue, node)


async def _delete_call_queues(channel: Any, queue: str, node: NodeProcess) -> None:
    """A test's own queues, shared and pinned, are removed after it."""
    await channel.queue_delete(queue)
    await channel.queue_delete(f"{queue}.{node.node_id}")


async def test_a_repeated_message_is_answered_from_memory_a_reused_id_is_not(
    tmp_path: Path, broker: Any, nodes: list[NodeProcess]
) -> None:
    node, queue, channel = await _serving(tmp_path, broker, nodes)
    caller = await Caller(channel).open()
    same_id = uuid.uuid4().hex

    async def echo(text: str) -> str:
        sent = await caller.send(queue, _call("echo", {"text": text}), message_id=same_id)
        answer = await caller.answer(sent)
        return str(answer["result"]["content"][0]["text"])

    assert await echo("first") == "first"
    # The same message again (what the broker redelivers): the remembered answer.
    assert await echo("first") == "first"
    assert _amqp(node)["counters"]["calls_duplicates"] == 1
    # The same id on another body is another call, not someone else's answer.
    assert await echo("second") == "second"
    counters = _amqp(node)["counters"]
    assert counters["calls_duplicates"] == 1 and counters["calls_answered"] == 2
    await _delete_call_queues(channel, queue, node)


async def test_a_call_answered_but_not_acked_when_its_node_is_killed_is_not_run_again(
    tmp_path: Path, broker: Any, nodes: list[NodeProcess]
) -> None:
    """kill -9 after the answer went out, before the ack reached the broker: the call is
    redelivered to the restarted node, which answers it from its store (the same answer)
    and does not run the tool again."""
    url = require_rabbitmq()
    runs, go = tmp_path / "runs", tmp_path / "go"
    queue = _unique("vsmcp.test.calls")
    plugin = """
[[tools.plugins]]
name = "count_then_wait"
target = "tests.integration.plugin_tools:count_then_wait"
"""
    data = tmp_path / "n"
    with TcpProxy("127.0.0.1", 5672) as proxy:
        proxied = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        node = _start(data, _config(proxied, calls_queue=queue, extra=plugin))
        nodes.append(node)
        _wait_connected(node)
        pinned = f"{queue}.{node.node_id}"
        channel = await broker.channel()
        reply_queue = await channel.declare_queue(exclusive=True)
        answers: list[tuple[str, bytes]] = []

        async def on_reply(message: Any) -> None:
            async with message.process():
                answers.append((str(message.correlation_id), message.body))

        await reply_queue.consume(on_reply)
        import aio_pika

        call = _call("count_then_wait", {"runs": str(runs), "go": str(go)})
        await channel.default_exchange.publish(
            aio_pika.Message(
                call, correlation_id="c1", message_id="once", reply_to=reply_queue.name
            ),
            routing_key=pinned,
        )
        wait_for(lambda: runs.exists(), timeout_s=30, what="the tool running")
        # What the broker sends the node stops here: the answer goes out, its confirm
        # never comes back, so the node never acks the call.
        proxy.hold_replies()
        go.touch()
        await async_wait_until(lambda: len(answers) == 1, timeout_s=30, what="the answer")
        assert _amqp(node)["counters"]["calls_answered"] == 1
        node.kill()
        node.wait_exit()
        nodes.remove(node)

    again = _start(data, _config(url, calls_queue=queue, extra=plugin))
    nodes.append(again)
    assert again.node_id == node.node_id
    await async_wait_until(
        lambda: len(answers) == 2, timeout_s=60, what="the redelivered call answered"
    )
    assert answers[1] == answers[0]
    assert json.loads(answers[0][1])["result"]["content"][0]["text"] == "counted"
    assert runs.read_text() == "run\n"  # run once
    counters = _amqp(again)["counters"]
    assert counters["calls_duplicates"] == 1 and counters["calls_answered"] == 0
    assert counters["remembered_rows_refused"] == 0
    await _delete_call_queues(channel, queue, again)


def _answer_rows(db: Path) -> list[tuple[bytes, int, bytes]]:
    """The remembered answers' rows as stored (keys as bytes: they may not be UTF-8)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.text_factory = bytes
        return sorted(conn.execute("SELECT key, ts_ms, body FROM amqp_answers"))


async def test_an_unreadable_answers_table_is_pain_and_calls_are_still_answered(
    tmp_path: Path, broker: Any, nodes: list[NodeProcess]
) -> None:
    """The remembered answers' table damaged inside a record (a key no longer UTF-8: the
    file's structure is intact, so the store's quick_check at open passes) cannot be
    read when the bridge starts. The node starts all the same; the bridge says why
    (`last_error`, `errors`), is pain, and answers calls, remembering them in memory
    only (a repeat is answered from memory); the table is left as it was, for a repair."""
    node, queue, channel = await _serving(tmp_path, broker, nodes)
    caller = await Caller(channel).open()
    before = await caller.answer(await caller.send(queue, _call("echo", {"text": "before"})))
    assert before["result"]["content"][0]["text"] == "before"
    node.terminate()
    assert node.wait_exit() == 0
    nodes.remove(node)
    db = node.data_dir / "vsmcp.db"
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE amqp_answers SET key = CAST(x'ff' || CAST(key AS BLOB) AS TEXT)")
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    damaged = _answer_rows(db)
    assert len(damaged) == 1 and damaged[0][0].startswith(b"\xff")

    again = _start(node.data_dir, _config(require_rabbitmq(), calls_queue=queue))
    nodes.append(again)
    status = _wait_connected(again)
    assert "AMQP remembered answers unreadable" in status["last_error"], status
    assert "UTF-8" in status["last_error"] and status["errors"] >= 1
    wait_for(lambda: _pained(again), timeout_s=30, what="pain from the unreadable answers")
    repeated = _call("echo", {"text": "after"})
    message_id = uuid.uuid4().hex
    for _ in range(2):
        sent = await caller.send(queue, repeated, message_id=message_id)
        assert (await caller.answer(sent))["result"]["content"][0]["text"] == "after"
    counters = _amqp(again)["counters"]
    assert counters["calls_answered"] == 1 and counters["calls_duplicates"] == 1
    assert counters["answers_remembered"] == 1 and counters["answer_writes"] == 0
    again.terminate()
    assert again.wait_exit() == 0
    nodes.remove(again)
    assert _answer_rows(db) == damaged
    await _delete_call_queues(channel, queue, again)


async def test_answers_the_broker_refuses_still_settle_their_calls(
    tmp_path: Path, broker: Any, nodes: list[NodeProcess]
) -> None:
    """A caller whose reply queue refuses every answer (full, `reject-publish`) gets its
    answers nacked: each call is still acked, so after more such calls than `prefetch`
    the node still takes calls from everyone else, on the same connection."""
    import aio_pika

    prefetch = 4
    node, queue, channel = await _serving(tmp_path, broker, nodes, f"prefetch = {prefetch}")
    trap = await channel.declare_queue(
        _unique("vsmcp.test.trap"),
        exclusive=True,
        arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
    )
    trapped = prefetch + 2
    for i in range(trapped):
        message = aio_pika.Message(
            _call("echo", {"text": f"trapped {i}"}),
            reply_to=trap.name,
            correlation_id=f"t{i}",
            message_id=uuid.uuid4().hex,
        )
        await channel.default_exchange.publish(message, routing_key=queue)
    status = wait_for(
        lambda: (s := _amqp(node))["counters"]["answers_refused"] >= trapped and s,
        timeout_s=30,
        what=f"{trapped} refused answers counted",
    )
    assert status["counters"]["answers_refused"] == trapped
    assert metric_counts(node, "vsmcp_amqp_refused") == {"answer": trapped, "outbox": 0}
    caller = await Caller(channel).open()
    answer = await caller.answer(await caller.send(queue, _call("echo", {"text": "good"})))
    assert answer["result"]["content"][0]["text"] == "good"
    status = _amqp(node)
    assert status["counters"]["connects"] == 1 and status["state"] == "connected"
    # Every call ran once and was settled: none is waiting in the queue or redelivered.
    assert status["counters"]["calls_received"] == trapped + 1
    assert status["counters"]["calls_duplicates"] == 0
    declared = await channel.declare_queue(queue, passive=True)
    assert declared.declaration_result.message_count == 0
    await _delete_call_queues(channel, queue, node)


def _rabbitmqctl(*args: str) -> str:
    if shutil.which("rabbitmqctl") is None:
        skip_or_fail("rabbitmqctl is not installed (needed to close the broker's connections)")
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        skip_or_fail(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()[:300]}")
    return done.stdout


class EventsConsumer:
    """A durable queue bound to the node's events: survives the connection being closed
    (aio-pika's robust connection restores the consumer), so nothing is missed."""

    def __init__(self, channel: Any, routing_key: str) -> None:
        self.channel = channel
        self.routing_key = routing_key
        self.name = _unique("vsmcp.test.events")
        self.arrivals: list[int] = []
        self.kinds: dict[int, str] = {}
        self.bodies: dict[int, dict[str, Any]] = {}

    async def open(self) -> EventsConsumer:
        import aio_pika

        exchange = await self.channel.declare_exchange(
            "vsmcp.events", aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await self.channel.declare_queue(self.name, durable=True)
        await queue.bind(exchange, self.routing_key)

        async def on_event(message: Any) -> None:
            async with message.process():
                seq = int(message.headers["seq"])
                self.arrivals.append(seq)
                self.bodies[seq] = json.loads(message.body)
                self.kinds[seq] = self.bodies[seq]["kind"]

        await queue.consume(on_event)
        return self

    def unique_in_order(self) -> list[int]:
        """Each seq once, in order of first arrival (a repeat is at-least-once delivery)."""
        seen: set[int] = set()
        out = []
        for seq in self.arrivals:
            if seq not in seen:
                seen.add(seq)
                out.append(seq)
        return out

    async def delete(self) -> None:
        await self.channel.queue_delete(self.name)


def _pained(node: NodeProcess) -> bool:
    view = node.get_json("/api/vsm")
    signals = view["s5"]["recent_signals"] + view["s3"]["algedonic"].get("recent", [])
    return any(s.get("source") == "bridge:amqp" for s in signals)


async def test_a_full_bound_queue_is_retried_on_the_same_connection_in_order(
    tmp_path: Path, broker: Any, nodes: list[NodeProcess]
) -> None:
    """One consumer's queue bound to `vsmcp.events` is full and refuses more
    (`reject-publish`): the broker nacks the events. The bridge keeps its connection
    (no reconnect, no call redelivered), counts the nacks, sends the refused events
    again with a backoff, and the stall is pain. Once that consumer reads, everything
    arrives at both consumers (in order at the healthy one); the outbox drains."""
    node, queue, channel = await _serving(tmp_path, broker, nodes)
    healthy = await EventsConsumer(channel, f"{node.node_id}.tool_call").open()
    exchange = await channel.get_exchange("vsmcp.events")
    bounded = await channel.declare_queue(
        _unique("vsmcp.test.bounded"),
        exclusive=True,
        arguments={"x-max-length": 5, "x-overflow": "reject-publish"},
    )
    await bounded.bind(exchange, f"{node.node_id}.tool_call")
    events = 20
    for i in range(events):
        assert "result" in call_tool(node, TOKEN, "echo", {"text": str(i)})
    status = wait_for(
        lambda: (s := _amqp(node))["counters"]["nacks"] > 0 and s,
        timeout_s=30,
        what="events refused by the broker",
    )
    assert status["outbox_depth"] > 0
    wait_for(lambda: _pained(node), timeout_s=30, what="pain from the stalled outbox")
    status = _amqp(node)
    assert status["state"] == "connected" and status["counters"]["connects"] == 1
    # The scrape after the status: the count only grows while the queue stays full.
    refused = metric_counts(node, "vsmcp_amqp_refused")
    assert refused["outbox"] >= status["counters"]["nacks"] > 0 and refused["answer"] == 0

    seen: list[int] = []

    async def on_event(message: Any) -> None:
        async with message.process():
            seen.append(int(message.headers["seq"]))

    await bounded.consume(on_event)
    await async_wait_until(
        lambda: len(set(seen)) >= events and len(set(healthy.arrivals)) >= events,
        timeout_s=60,
        what=f"{events} events at both consumers",
    )
    wait_for(lambda: _amqp(node)["outbox_depth"] == 0, timeout_s=30, what="outbox drained")
    # The healthy queue keeps the order; the one that refused may not (it can take the
    # entries after a refused one when a slot frees meanwhile): each once, by seq.
    in_order = healthy.unique_in_order()
    assert len(in_order) == events and in_order == sorted(in_order)
    assert set(seen) == set(in_order)
    status = _amqp(node)
    assert status["counters"]["connects"] == 1
    assert status["counters"]["published"] >= events
    await healthy.delete()
    await _delete_call_queues(channel, queue, node)


CALLS_IN_OUTAGE_TEST = 10_000
CHUNK = 500


async def _retrying(send: Callable[[], Awaitable[None]], *, what: str) -> None:
    """`send()` until it succeeds (the client's robust connection may be reconnecting)."""
    import aiormq.exceptions

    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            await send()
            return
        except (aiormq.exceptions.AMQPError, RuntimeError):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{what}: the broker did not take it within 60 s") from None
            await asyncio.sleep(0.1)  # a retry pause, while aio-pika reconnects


async def test_broker_closing_connections_mid_stream_loses_and_repeats_no_call_or_event(
    tmp_path: Path, broker: Any, nodes: list[NodeProcess]
) -> None:
    import aio_pika

    url = require_rabbitmq()
    queue = _unique("vsmcp.test.calls")
    replies = _unique("vsmcp.test.replies")
    node = _start(tmp_path / "n", _config(url, calls_queue=queue))
    nodes.append(node)
    _wait_connected(node)
    channel = await broker.channel()
    events = await EventsConsumer(channel, f"{node.node_id}.tool_call").open()
    reply_queue = await channel.declare_queue(replies, durable=True)
    answered: set[str] = set()

    async def on_reply(message: Any) -> None:
        async with message.process():
            assert "result" in json.loads(message.body)
            answered.add(str(message.correlation_id))

    await reply_queue.consume(on_reply)
    # The stream: 10,000 calls, published (confirmed) as fast as the client can.
    publisher = await broker.channel(publisher_confirms=True)

    async def publish(first: int, last: int) -> None:
        await asyncio.gather(
            *(
                publisher.default_exchange.publish(
                    aio_pika.Message(
                        _call("echo", {"text": str(i)}, i),
                        correlation_id=str(i),
                        message_id=f"call-{i}",
                        reply_to=replies,
                    ),
                    routing_key=queue,
                )
                for i in range(first, last)
            )
        )

    break_at = -1
    for first in range(0, CALLS_IN_OUTAGE_TEST, CHUNK):
        last = min(first + CHUNK, CALLS_IN_OUTAGE_TEST)
        # The client's own connection is closed too: a chunk it could not get confirmed
        # is sent again once aio-pika's robust connection is back (same message ids,
        # so the node must recognise the ones it already has).
        await _retrying(functools.partial(publish, first, last), what=f"calls {first}..{last}")
        if first == CHUNK * 4:
            break_at = len(events.arrivals)
            # The broker closes every connection: the node's and this client's.
            await asyncio.to_thread(_rabbitmqctl, "close_all_connections", "test")

    def done() -> bool:
        return (
            len(answered) == CALLS_IN_OUTAGE_TEST
            and len(events.unique_in_order()) >= CALLS_IN_OUTAGE_TEST
        )

    await async_wait_until(done, timeout_s=240, what="every call answered and its event seen")
    assert 0 <= break_at < CALLS_IN_OUTAGE_TEST  # the connections were closed mid-stream
    status = _amqp(node)
    assert status["counters"]["connects"] >= 2
    ordered = events.unique_in_order()
    # Every call ran exactly once (a call run twice would be a 10,001st event)...
    assert len(ordered) == CALLS_IN_OUTAGE_TEST
    assert set(events.kinds.values()) == {"tool_call"}
    # ...and the events arrived in the node's order.
    assert ordered == sorted(ordered)
    # The depth follows the table even when the sender was cancelled (the connection
    # closed) while its removal of confirmed entries was committing: CI once saw it stay
    # non-zero for good here (tests/node/bridges/test_outbox.py has the regression test).
    wait_for(lambda: _amqp(node)["outbox_depth"] == 0, timeout_s=30, what="outbox drained")
    await events.delete()
    await channel.queue_delete(replies)
    await _delete_call_queues(channel, queue, node)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_kill_9_with_an_unflushed_outbox_flushes_after_restart(
    tmp_path: Path, broker: Any, nodes: list[NodeProcess]
) -> None:
    url = require_rabbitmq()
    unreachable = f"amqp://guest:guest@127.0.0.1:{_closed_port()}/"
    data = tmp_path / "n"
    kinds = ("tool_call", "unit_state")
    node = _start(data, _config(unreachable, events=kinds))
    nodes.append(node)
    calls = 50
    for i in range(calls):
        assert "result" in call_tool(node, TOKEN, "echo", {"text": str(i)})

    def outage_seen() -> dict[str, Any] | None:
        status = _amqp(node)
        return status if status["state"] == "down" and status["outbox_depth"] >= calls else None

    status = wait_for(outage_seen, timeout_s=30, what="the bridge down with a full outbox")
    assert status["errors"] >= 1 and status["last_error"]

    wait_for(
        lambda: _pained(node), timeout_s=30, what="pain from bridge:amqp on the algedonic channel"
    )
    node.kill()
    node.wait_exit()
    nodes.remove(node)

    channel = await broker.channel()
    node_id = node.node_id
    events = await EventsConsumer(channel, f"{node_id}.#").open()
    again = _start(data, _config(url, events=kinds))
    nodes.append(again)
    assert again.node_id == node_id

    def tool_calls() -> list[int]:
        return [s for s in events.unique_in_order() if events.kinds[s] == "tool_call"]

    def flushed() -> bool:
        return len(tool_calls()) >= calls

    await async_wait_until(flushed, timeout_s=60, what="the outbox flushed after restart")
    ordered = events.unique_in_order()
    assert ordered == sorted(ordered)
    assert len(tool_calls()) == calls
    # The outage itself is in the stream: the bridge's state changes, the one before the
    # kill from the outbox, then its reconnection; and the capability announcements.
    states = [
        (b["previous"], b["state"])
        for _, b in sorted(events.bodies.items())
        if b["kind"] == "unit_state" and b["unit"] == "bridge:amqp"
    ]
    assert states[0] == ("connecting", "down")

    def reconnected() -> bool:
        return any(b.get("state") == "connected" for b in events.bodies.values())

    await async_wait_until(reconnected, timeout_s=30, what="the bridge's connected event")
    assert "capabilities" in events.kinds.values()
    wait_for(lambda: _amqp(again)["outbox_depth"] == 0, timeout_s=30, what="outbox empty")
    await events.delete()
    await channel.queue_delete(f"vsmcp.calls.{node_id}")


async def test_zones_come_from_the_user_mapping_then_the_queue_mapping(
    tmp_path: Path, broker: Any, nodes: list[NodeProcess]
) -> None:
    url = require_rabbitmq()
    queue = _unique("vsmcp.test.calls")
    extra = _ZONES_EXTRA + f'"{queue}" = "public"\n'
    data = tmp_path / "n"
    node = _start(data, _config(url, calls_queue=queue, extra=extra))
    nodes.append(node)
    _wait_connected(node)
    channel = await broker.channel()
    caller = await Caller(channel).open()
    signal = {"valence": "pleasure", "intensity": 0.1, "reason": "zone test"}
    import aio_pika

    async def call(routing_key: str, user_id: str | None) -> dict[str, Any]:
        correlation_id = uuid.uuid4().hex
        await channel.default_exchange.publish(
            aio_pika.Message(
                _call("vsm.signal", signal, 5),
                correlation_id=correlation_id,
                reply_to=caller.reply_queue.name,
                user_id=user_id,
            ),
            routing_key=routing_key,
        )
        return await caller.answer(correlation_id)

    # The shared queue maps to public: vsm.signal (restricted) is refused...
    assert (await call(queue, None))["error"]["code"] == ZONE_DENIED
    # ...the pinned queue is unmapped (default_zone: restricted), and the user id (which
    # the broker checks) maps to restricted before the queue mapping applies.
    assert "result" in await call(f"{queue}.{node.node_id}", None)
    assert "result" in await call(queue, "guest")
    await _delete_call_queues(channel, queue, node)


_ZONES_EXTRA = """
default_zone = "restricted"
[bridges.amqp.user_zones]
guest = "restricted"
[bridges.amqp.queue_zones]
"""


async def test_a_full_outbox_counts_and_audits_what_it_drops(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    require_rabbitmq()
    unreachable = f"amqp://guest:guest@127.0.0.1:{_closed_port()}/"
    node = _start(tmp_path / "n", _config(unreachable, extra="outbox_capacity = 10"))
    nodes.append(node)
    for i in range(30):
        assert "result" in call_tool(node, TOKEN, "echo", {"text": str(i)})

    def overflowed() -> dict[str, Any] | None:
        status = _amqp(node)
        settled = status["counters"]["outbox_overflowed"] >= 21 and status["outbox_depth"] >= 10
        return status if settled else None

    # 30 tool_call events and the start's announcement into room for 10 (a refusal is
    # counted at once, the kept entries once their transaction commits: wait for both).
    status = wait_for(overflowed, timeout_s=30, what="the outbox overflow counted and kept")
    assert status["outbox_depth"] == 10 and status["counters"]["outbox_overflowed"] == 21

    def audited() -> int:
        with sqlite3.connect(node.data_dir / "vsmcp.db") as db:
            rows = db.execute(
                "SELECT data FROM audit_entries WHERE kind = 'bridge.outbox_overflow'"
            ).fetchall()
        return sum(json.loads(row[0])["dropped"] for row in rows)

    # Audited at most once a second: the last of it when the bridge stops.
    node.stop()
    nodes.remove(node)
    assert audited() == 21


def test_a_bad_amqp_table_refuses_the_start_naming_its_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[bridges.amqp]\nurl = "amqp://127.0.0.1/"\nevents = ["nope"]\n')
    result = run_daemon(
        "--dev", "--no-mdns", "--data-dir", str(tmp_path / "data"), "--http-port", "0",
        "--mesh-port", "0", "--config", str(config),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "config key 'bridges.amqp.events': unknown kind(s) ['nope']" in result.stderr


async def test_a_new_local_tool_is_announced(
    tmp_path: Path, broker: Any, nodes: list[NodeProcess]
) -> None:
    url = require_rabbitmq()
    queue = _unique("vsmcp.test.calls")
    extra = "[node]\ndebug_api = true\n"
    config = _config(url, calls_queue=queue).replace("[bridges.amqp]", extra + "[bridges.amqp]")
    node = _start(tmp_path / "n", config)
    nodes.append(node)
    _wait_connected(node)
    channel = await broker.channel()
    events = await EventsConsumer(channel, f"{node.node_id}.capabilities").open()
    assert node.post("/api/debug/tools?name=late.echo&zone=ops") == 200

    def announced() -> dict[str, Any] | None:
        for body in events.bodies.values():
            tools = {t["name"]: t for t in body["tools"]}
            if "late.echo" in tools:
                return tools["late.echo"]
        return None

    tool = await async_wait_until(announced, timeout_s=30, what="late.echo announced")
    assert tool["_meta"]["vsmcp/zone"] == "ops"
    # The node's offers tool (its status resource) is plumbing: never announced.
    assert "vsm.mcp.node" in {t["name"] for t in node.get_json("/api/tools")["offers"]}
    for body in events.bodies.values():
        assert not [t["name"] for t in body["tools"] if t["name"].startswith("vsm.mcp.")]
    await events.delete()
    await _delete_call_queues(channel, queue, node)
