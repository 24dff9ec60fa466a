"""The MQTT bridge in a real `vsmcpd` against the real Mosquitto, driven by plain aiomqtt
clients (not our code): telemetry in → a pattern's alert out; the retained status and
tool announcement a fresh subscriber sees, and the last will when the node is killed -9;
MQTT 5 request/response tool calls and their bad inputs; bad config refused.

Every test uses its own topic prefix, so tests (and other users of the broker) never see
each other's messages; retained messages a test leaves are cleared at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.integration.harness import NodeProcess, counters, run_daemon
from tests.integration.overheat import overheat_patterns
from tests.polling import async_wait_until
from tests.skips import require_mosquitto

pytestmark = pytest.mark.integration

PATTERNS = overheat_patterns([{"type": "emit", "label": "overheat"}])
MAX_CALL_BYTES = 2048
WAIT_S = 20.0


@pytest.fixture
def broker() -> tuple[str, int]:
    return require_mosquitto()


@pytest.fixture
def prefix() -> str:
    return f"t{secrets.token_hex(6)}"


def _config(tmp_path: Path, prefix: str, broker: tuple[str, int], extra: str = "") -> Path:
    patterns = tmp_path / "patterns"
    patterns.mkdir(exist_ok=True)
    (patterns / "edge.json").write_text(json.dumps({"patterns": PATTERNS}))
    config = tmp_path / "node.toml"
    config.write_text(
        f"""
[node]
debug_api = true
[tools]
entry_points = false
[vsm]
patterns_dir = "{patterns}"
[bridges.mqtt]
url = "mqtt://{broker[0]}:{broker[1]}"
prefix = "{prefix}"
telemetry_topics = ["{prefix}/telemetry/#"]
max_call_bytes = {MAX_CALL_BYTES}
keepalive_s = 5
{extra}
"""
    )
    return config


@pytest.fixture
async def node(
    request: pytest.FixtureRequest, tmp_path: Path, prefix: str, broker: tuple[str, int]
) -> AsyncIterator[NodeProcess]:
    """A node with the bridge; at the end, the retained messages it left are cleared.
    Parametrized (indirect), the parameter is its `telemetry_connection`."""
    connection = getattr(request, "param", "own")
    config = _config(tmp_path, prefix, broker, f'telemetry_connection = "{connection}"')
    process = NodeProcess(tmp_path / "data", "--config", str(config)).start()
    try:
        yield process
    finally:
        process.stop()
        await _clear_retained(broker, prefix, process.node_id)


@contextlib.asynccontextmanager
async def client(broker: tuple[str, int]) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        broker[0], broker[1], protocol=aiomqtt.ProtocolVersion.V5, timeout=10
    ) as c:
        yield c


async def _clear_retained(broker: tuple[str, int], prefix: str, node_id: str) -> None:
    async with client(broker) as c:
        for leaf in ("status", "tools"):
            await c.publish(f"{prefix}/nodes/{node_id}/{leaf}", b"", qos=1, retain=True)


async def _next(c: aiomqtt.Client, topic: str, timeout_s: float = WAIT_S) -> aiomqtt.Message:
    async def first() -> aiomqtt.Message:
        async for message in c.messages:
            if message.topic.matches(topic):
                return message
        raise AssertionError("the client's message stream ended")

    return await asyncio.wait_for(first(), timeout_s)


async def _retained(broker: tuple[str, int], topic: str) -> bytes:
    """What a subscriber arriving now is given at `topic` (the retained message)."""
    async with client(broker) as later:
        await later.subscribe(topic, qos=1)
        payload = (await _next(later, topic)).payload
        assert isinstance(payload, bytes)
        return payload


async def _node_topics(fresh: aiomqtt.Client, prefix: str) -> dict[str, aiomqtt.Message]:
    """What a subscriber arriving now is given under <prefix>/nodes: the retained status
    and announcement (of one node), by topic."""
    await fresh.subscribe(f"{prefix}/nodes/+/+", qos=1)
    seen: dict[str, aiomqtt.Message] = {}
    while len(seen) < 2:
        message = await _next(fresh, f"{prefix}/nodes/+/+")
        seen[message.topic.value] = message
    return seen


def _bridge(node: NodeProcess) -> dict[str, Any]:
    view: dict[str, Any] = node.get_json("/api/vsm")["bridges"]["mqtt"]
    return view


async def _wait_connected(node: NodeProcess) -> None:
    await async_wait_until(
        lambda: _bridge(node)["state"] == "connected", timeout_s=WAIT_S, what="bridge connected"
    )


@pytest.mark.parametrize("node", ["own", "shared"], indirect=True)
async def test_telemetry_from_a_plain_client_produces_the_patterns_alert(
    node: NodeProcess, prefix: str, broker: tuple[str, int]
) -> None:
    await _wait_connected(node)
    async with client(broker) as c:
        await c.subscribe(f"{prefix}/alerts", qos=1)
        # Hot but not busy: no alert. Then a JSON object with both readings, and two
        # bare numbers on <device>/<metric> topics.
        await c.publish(f"{prefix}/telemetry/pump-1", b'{"temp": 95, "cpu": 40}', qos=1)
        await c.publish(f"{prefix}/telemetry/pump-7", b'{"temp": 95.5, "cpu": 85}', qos=1)
        await c.publish(f"{prefix}/telemetry/fan-3/cpu", b"88", qos=1)
        await c.publish(f"{prefix}/telemetry/fan-3/temp", b"91", qos=1)
        groups: set[str] = set()
        while len(groups) < 2:
            alert = json.loads((await _next(c, f"{prefix}/alerts")).payload)
            assert alert["node"] == node.node_id
            event = alert["event"]
            assert event["kind"] == "pattern_matched"
            assert event["label"] == "overheat"
            groups.add(event["group"])
        assert groups == {"pump-7", "fan-3"}
        # Bad payloads are counted, nothing crashes, and telemetry still flows.
        before = _bridge(node)["counters"].get("telemetry_bad", 0)
        bad = [b"not json", b"[1, 2]", b'{"ok": "no number"}', b"x" * 20_000, b"true"]
        for payload in bad:
            await c.publish(f"{prefix}/telemetry/pump-9", payload, qos=1)
        await c.publish(f"{prefix}/telemetry", b'{"temp": 1}', qos=1)  # no device
        await async_wait_until(
            lambda: _bridge(node)["counters"].get("telemetry_bad", 0) >= before + 6,
            timeout_s=WAIT_S,
            what="bad telemetry counted",
        )
        await c.publish(f"{prefix}/telemetry/pump-9", b'{"cpu": 99, "temp": 99}', qos=1)
        alert = json.loads((await _next(c, f"{prefix}/alerts")).payload)
        assert alert["event"]["group"] == "pump-9"
    view = _bridge(node)
    assert view["connected"] is True
    assert view["counters"]["telemetry_events"] >= 8
    # Counted once the broker acknowledged it, which may be after a subscriber had it.
    await async_wait_until(
        lambda: _bridge(node)["counters"].get("alerts_published", 0) >= 3,
        timeout_s=WAIT_S,
        what="three alerts acknowledged",
    )


async def test_retained_announcements_status_and_the_last_will(
    node: NodeProcess, prefix: str, broker: tuple[str, int]
) -> None:
    await _wait_connected(node)
    status_topic = f"{prefix}/nodes/{node.node_id}/status"
    tools_topic = f"{prefix}/nodes/{node.node_id}/tools"
    # The bridge is `connected` once `online` is acknowledged, and announces its tools
    # right after (counted once acknowledged).
    await async_wait_until(
        lambda: _bridge(node)["counters"].get("announcements", 0) >= 1,
        timeout_s=WAIT_S,
        what="the tools announced",
    )
    # A subscriber that comes after the node published sees both, retained.
    async with client(broker) as fresh:
        seen = await _node_topics(fresh, prefix)
        assert seen[status_topic].retain and seen[status_topic].payload == b"online"
        announcement = json.loads(seen[tools_topic].payload)
        assert seen[tools_topic].retain
        assert announcement["node"] == node.node_id
        assert announcement["calls"] == f"{prefix}/calls/{node.node_id}"
        names = {tool["name"] for tool in announcement["tools"]}
        assert "echo" in names
        # vsm.signal is in a higher zone than the lowest, which MQTT callers get.
        assert "vsm.signal" not in names
        # The node's offers tool carries its status resource: plumbing, not a tool.
        assert "vsm.mcp.node" in {t["name"] for t in node.get_json("/api/tools")["offers"]}
        assert not {n for n in names if n.startswith("vsm.mcp.")}
        # A tool appears: the announcement is published again, with it.
        assert node.post("/api/debug/tools?name=extra.echo&zone=public") == 200
        changed = json.loads((await _next(fresh, tools_topic)).payload)
        while "extra.echo" not in {t["name"] for t in changed["tools"]}:
            changed = json.loads((await _next(fresh, tools_topic)).payload)  # an older change
        assert {t["name"] for t in changed["tools"]} == names | {"extra.echo"}
        metrics = node.get("/metrics")[1].decode()
        assert 'vsmcp_bridge_connected{bridge="mqtt"} 1.0' in metrics
        assert 'vsmcp_bridge_errors_total{bridge="mqtt"}' in metrics
        node.kill()
        node.wait_exit()
        will = await _next(fresh, status_topic)
        assert will.payload == b"offline"
    # ...and it stays: a later subscriber sees the node offline.
    assert await _retained(broker, status_topic) == b"offline"


async def test_a_clean_stop_says_offline(
    node: NodeProcess, prefix: str, broker: tuple[str, int]
) -> None:
    await _wait_connected(node)
    status_topic = f"{prefix}/nodes/{node.node_id}/status"
    node.terminate()
    assert node.wait_exit() == 0
    assert await _retained(broker, status_topic) == b"offline"


class Caller:
    """A plain MQTT 5 requester: request topic, its own response topic, correlation."""

    def __init__(self, c: aiomqtt.Client, prefix: str) -> None:
        self.c = c
        self.replies = f"{prefix}/replies/{secrets.token_hex(4)}"

    async def start(self) -> Caller:
        await self.c.subscribe(self.replies, qos=1)
        return self

    async def ask(
        self, topic: str, payload: bytes, *, correlation: bytes | None = None
    ) -> dict[str, Any]:
        correlation = correlation or secrets.token_bytes(8)
        await self.send(topic, payload, correlation=correlation)
        reply = await _next(self.c, self.replies)
        assert reply.properties is not None
        assert getattr(reply.properties, "CorrelationData", None) == correlation
        answer: dict[str, Any] = json.loads(reply.payload)
        return answer

    async def send(
        self, topic: str, payload: bytes, *, correlation: bytes, response_topic: bool = True
    ) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if response_topic:
            props.ResponseTopic = self.replies
        props.CorrelationData = correlation
        await self.c.publish(topic, payload, qos=1, properties=props)


def _call(name: str, arguments: dict[str, Any], request_id: int = 1) -> bytes:
    request = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
    return json.dumps(request).encode()


async def test_request_response_tool_calls_and_bad_input(
    node: NodeProcess, prefix: str, broker: tuple[str, int]
) -> None:
    await _wait_connected(node)
    pinned, shared = f"{prefix}/calls/{node.node_id}", f"{prefix}/calls"
    async with client(broker) as c:
        caller = await Caller(c, prefix).start()
        answer = await caller.ask(pinned, _call("echo", {"text": "over mqtt"}, 7))
        assert answer["id"] == 7
        assert answer["result"]["content"][0]["text"] == "over mqtt"
        answer = await caller.ask(shared, _call("echo", {"text": "shared"}, 8))
        assert answer["result"]["content"][0]["text"] == "shared"
        listed = await caller.ask(pinned, b'{"jsonrpc": "2.0", "id": 9, "method": "tools/list"}')
        assert "echo" in {t["name"] for t in listed["result"]["tools"]}

        # Bad input: each gets a clear error answer with the request's correlation.
        answer = await caller.ask(pinned, b"{not json")
        assert answer["error"]["code"] == -32700
        answer = await caller.ask(pinned, _call("echo", {"text": "x" * MAX_CALL_BYTES}))
        assert answer["error"]["code"] == -32019
        assert answer["error"]["data"]["max_bytes"] == MAX_CALL_BYTES
        answer = await caller.ask(pinned, _call("no.such.tool", {}, 3))
        assert (answer["id"], answer["error"]["code"]) == (3, -32602)
        assert answer["error"]["data"]["reason"] == "unknown_tool"
        # an offers tool (the node's status resource) is no tool to a caller either
        read = {"method": "resources/list", "params": {}}
        answer = await caller.ask(pinned, _call("vsm.mcp.node", read, 10))
        assert (answer["id"], answer["error"]["data"]["reason"]) == (10, "unknown_tool")
        # vsm.signal is in the restricted zone; MQTT callers get the lowest.
        answer = await caller.ask(pinned, _call("vsm.signal", {"intensity": 0.1}, 4))
        assert (answer["id"], answer["error"]["code"]) == (4, -32010)
        answer = await caller.ask(pinned, _call("echo", {"text": 5}, 5))
        assert answer["error"]["data"]["reason"] == "invalid_arguments"
        answer = await caller.ask(pinned, b'{"jsonrpc": "2.0", "id": 6, "method": "nope"}')
        assert answer["error"]["code"] == -32601

        # No response topic: nothing can be answered; counted, and the node goes on.
        before = _bridge(node)["counters"].get("requests_unanswerable", 0)
        await caller.send(
            pinned, _call("echo", {"text": "lost"}), correlation=b"c", response_topic=False
        )
        await async_wait_until(
            lambda: _bridge(node)["counters"].get("requests_unanswerable", 0) == before + 1,
            timeout_s=WAIT_S,
            what="the unanswerable request counted",
        )
        answer = await caller.ask(pinned, _call("echo", {"text": "still here"}))
        assert answer["result"]["content"][0]["text"] == "still here"
    # A reply is counted once its publish is acknowledged, which can come after the
    # caller already holds the answer: poll for the count rather than read it once.
    await async_wait_until(
        lambda: _bridge(node)["counters"].get("replies", 0) >= 10,
        timeout_s=WAIT_S,
        what="every answer counted as a reply",
    )
    assert _bridge(node)["counters"]["error_replies"] >= 6


def test_bad_config_is_refused_naming_the_key(tmp_path: Path, broker: tuple[str, int]) -> None:
    cases = {
        'url = "http://127.0.0.1:1883"': "bridges.mqtt.url",
        'telemetry_topics = ["a/#/b"]': "bridges.mqtt.telemetry_topics[0]",
        'telemetry_connection = "fast"': "bridges.mqtt.telemetry_connection",
        'alert_kinds = ["no_such_kind"]': "bridges.mqtt.alert_kinds",
        'call_zone = "no-such-zone"': "bridges.mqtt.call_zone",
        "inbox = 0": "bridges.mqtt.inbox",
    }
    for line, key in cases.items():
        config = tmp_path / "node.toml"
        config.write_text(f"[tools]\nentry_points = false\n[bridges.mqtt]\n{line}\n")
        data = tmp_path / f"data-{secrets.token_hex(3)}"
        result = run_daemon(
            "--config",
            str(config),
            "--data-dir",
            str(data),
            "--dev",
            "--http-port",
            "0",
            "--mesh-port",
            "0",
        )
        assert result.returncode == 2, (line, result.stderr[-2000:])
        assert key in result.stderr, (line, result.stderr[-2000:])


class Proxy:
    """A TCP proxy between the node and the broker that the test can cut: an outage of
    the broker as the node sees it (the broker itself is shared, so it is not stopped)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.open = True
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Drop every connection and refuse new ones until `resume`."""
        self.open = False
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    def resume(self) -> None:
        self.open = True


OPS_TOKEN = "ops-token-0123456789abcdef"
OUTAGE_CONFIG = f"""reconnect_max_s = 1.0
[[vsm.responses]]
name = "page"
do = "alert"
source = "http:ops"
[[mcp.tokens]]
name = "ops"
token = "{OPS_TOKEN}"
zone = "restricted"
"""


def _strong_pain(node: NodeProcess) -> None:
    """A signal System 5's `page` rule answers with an alert (an s5_response event)."""
    body = json.dumps({"valence": "pain", "intensity": 0.9, "reason": "during the outage"})
    request = urllib.request.Request(
        node.url + "/api/algedonic",
        data=body.encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {OPS_TOKEN}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202


async def test_reconnects_after_an_outage_with_pain_while_down(
    tmp_path: Path, prefix: str, broker: tuple[str, int]
) -> None:
    async with Proxy(broker) as proxy:
        config = _config(tmp_path, prefix, ("127.0.0.1", proxy.port), OUTAGE_CONFIG)
        node = NodeProcess(tmp_path / "data", "--config", str(config)).start()
        status_topic = f"{prefix}/nodes/{node.node_id}/status"
        try:
            await _wait_connected(node)
            async with client(broker) as c:
                await c.subscribe(status_topic, qos=1)
                await c.subscribe(f"{prefix}/alerts", qos=1)
                assert (await _next(c, status_topic)).payload == b"online"
                pain_before = counters(node, "vsmcp_events").get("algedonic", 0)
                proxy.cut()
                # The broker lost the node's connection: its last will says so.
                assert (await _next(c, status_topic)).payload == b"offline"
                await async_wait_until(
                    lambda: _bridge(node)["state"] == "down", timeout_s=WAIT_S, what="down"
                )
                view = _bridge(node)
                assert view["connected"] is False
                assert view["counters"]["disconnects"] >= 1
                assert "broker" in view["last_error"]
                # Retries fail too (the proxy refuses): one pain for the outage, not one
                # per attempt (again only after PAIN_REPEAT_S = 30 s).
                # (an attempt waits up to BROKER_TIMEOUT_S = 10 s for the broker's CONNACK)
                await async_wait_until(
                    lambda: _bridge(node)["counters"]["disconnects"] >= 2,
                    timeout_s=30,
                    what="a failed reconnection attempt",
                )
                assert _bridge(node)["state"] == "down"
                await async_wait_until(
                    lambda: counters(node, "vsmcp_events").get("algedonic", 0) > pain_before,
                    timeout_s=WAIT_S,
                    what="pain on the algedonic channel",
                )
                assert counters(node, "vsmcp_events").get("algedonic", 0) == pain_before + 1
                # An alert raised while the broker is away waits in the outbox...
                _strong_pain(node)
                await async_wait_until(
                    lambda: _bridge(node)["outbox_depth"] >= 1, timeout_s=WAIT_S, what="outbox"
                )
                proxy.resume()
                assert (await _next(c, status_topic)).payload == b"online"
                # ...and leaves once the broker is back.
                while True:
                    event = json.loads((await _next(c, f"{prefix}/alerts")).payload)["event"]
                    if event["kind"] == "s5_response" and event["rule"] == "page":
                        break
                await _wait_connected(node)
                await async_wait_until(
                    lambda: _bridge(node)["outbox_depth"] == 0, timeout_s=WAIT_S, what="flushed"
                )
                # Telemetry flows again, and so do alerts.
                await c.publish(f"{prefix}/telemetry/pump-2", b'{"temp": 99, "cpu": 99}', qos=1)
                while True:  # past any other alert (a System 5 response)
                    event = json.loads((await _next(c, f"{prefix}/alerts")).payload)["event"]
                    if event["kind"] == "pattern_matched":
                        break
                assert event["group"] == "pump-2"
            assert node.get_json("/healthz")["status"] == "ok"
        finally:
            node.stop()
            await _clear_retained(broker, prefix, node.node_id)


async def test_requests_beyond_max_concurrent_calls_are_refused_as_overloaded(
    tmp_path: Path, prefix: str, broker: tuple[str, int]
) -> None:
    extra = (
        "max_concurrent_calls = 2\n"
        '[[tools.plugins]]\nname = "hold"\ntarget = "tests.integration.plugin_tools:hold"\n'
    )
    config = _config(tmp_path, prefix, broker, extra)
    node = NodeProcess(tmp_path / "data", "--config", str(config)).start()
    markers = tmp_path / "markers"
    markers.mkdir()
    try:
        await _wait_connected(node)
        pinned = f"{prefix}/calls/{node.node_id}"
        async with client(broker) as c:
            caller = await Caller(c, prefix).start()
            hold = _call("hold", {"marker_dir": str(markers), "hold_s": 600})
            for correlation in (b"h1", b"h2"):
                await caller.send(pinned, hold, correlation=correlation)
            # (one marker: it is named after the process) Requests start in the order they
            # arrive, so both holds run by the time the third is handled.
            await async_wait_until(
                lambda: any(markers.iterdir()), timeout_s=WAIT_S, what="a hold running"
            )
            answer = await caller.ask(pinned, _call("echo", {"text": "third"}))
            assert answer["error"]["code"] == -32012
            assert answer["error"]["data"]["limit"] == "mqtt-concurrent-calls"
            assert _bridge(node)["counters"]["requests_overloaded"] == 1
    finally:
        node.stop()
        await _clear_retained(broker, prefix, node.node_id)
