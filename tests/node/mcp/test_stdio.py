"""serve_stdio: the SDK's stdio client (auto and legacy) against a subprocess, and in-process."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from tests.polling import async_wait_for, async_wait_until
from vsmcp.node.mcp.offers import LIST_CHANGED
from vsmcp.node.mcp.protocol import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    OVERLOADED,
    PARSE_ERROR,
    PROVIDER_ERROR,
    REQUEST_CANCELLED,
    ZONE_DENIED,
)
from vsmcp.node.mcp.stdio import serve_stdio
from vsmcp.node.mcp.subscriptions import MAX_SUBSCRIPTIONS_PER_SESSION, SessionUpdates
from vsmcp.node.tools.client_channel import UPDATED_METHOD
from vsmcp.node.tools.config import MountConfig, ToolsConfig
from vsmcp.node.tools.model import CallContext
from vsmcp.node.tools.registry import LocalCatalog, build_local_catalog

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_sdk_stdio_client(mode: str) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "tests.node.mcp.stdio_server"],
        cwd=str(ROOT),
        env={"PYTHONPATH": str(ROOT)},
    )
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with Client(params, mode=mode, cache=None) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert names == ["echo", "slow"]
        result = await client.call_tool("echo", {"text": "over stdio"})
        assert result.content[0].text == "over stdio"  # type: ignore[union-attr]
        await client.call_tool("slow", {"steps": 2}, progress_callback=on_progress)
        assert seen == [1, 2]
        with pytest.raises(MCPError) as err:
            await client.call_tool("ops.restart", {"a": 1, "b": 1})
        assert err.value.code == ZONE_DENIED
        with pytest.raises(MCPError) as err:
            await client.call_tool("missing", {})
        assert err.value.code == INVALID_PARAMS


async def test_in_process_lines_and_cancellation() -> None:
    async with build_local_catalog(ToolsConfig(entry_points=False)) as catalog:
        await catalog.supervisor.wait_running()
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        client_in, client_out = await asyncio.open_connection(sock=theirs)
        server = asyncio.create_task(serve_stdio(catalog, reader, writer))
        call = {"name": "echo", "arguments": {"text": "x"}}
        client_out.write(b"{oops\n")
        client_out.write(b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}\n')
        client_out.write(
            json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}).encode()
            + b"\n"
        )
        replies = [json.loads(await client_in.readline()) for _ in range(3)]
        assert replies[0]["error"]["code"] == PARSE_ERROR
        assert replies[1]["result"]["protocolVersion"] == "2025-11-25"
        assert replies[2]["result"]["content"] == [{"type": "text", "text": "x"}]
        client_out.close()
        await asyncio.wait_for(server, 5)
        writer.close()
        await client_out.wait_closed()


# -- resource subscriptions and list changes over stdio (as over HTTP) -------------------

OFFERS_SERVER = ROOT / "tests" / "integration" / "offers_server.py"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
GREETING = "data://greeting"


class _Lines:
    """A raw stdio MCP client: writes lines, keeps every line read (a reader task)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        catalog: LocalCatalog,
        server: asyncio.Task[None],
    ) -> None:
        self.writer = writer
        self.catalog = catalog
        self.server = server
        self.seen: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read(reader))
        self._ids = iter(range(100, 10_000))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            self.seen.append(json.loads(line))

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")

    async def ask(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The response (result or error) to one request."""
        request_id = next(self._ids)
        self.send({"id": request_id, "method": method, "params": params or {}})
        return await self.first(lambda m: m.get("id") == request_id and "method" not in m)

    async def first(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((m for m in self.seen if match(m)), None)

        return await async_wait_until(found, timeout_s=30, what="a matching line on stdout")

    async def touch(self, uri: str) -> int:
        """How many sessions the server told `uri` changed (its subscribers)."""
        answer = await self.ask("tools/call", {"name": "docs.touch", "arguments": {"uri": uri}})
        return int(answer["result"]["structuredContent"]["result"])

    async def touched(self, uri: str) -> None:
        """Touch `uri` until the server has a subscriber to tell (the mount subscribes in
        the background, after `{}` was answered)."""

        async def told() -> bool:
            return await self.touch(uri) > 0

        await async_wait_for(told, timeout_s=30, what=f"the server subscribed to {uri}")

    async def end(self) -> None:
        """Close the server's stdin and wait for it to return."""
        if not self.writer.is_closing() and self.writer.can_write_eof():
            self.writer.write_eof()
        await asyncio.wait_for(self.server, 10)

    async def close(self) -> None:
        self.writer.close()
        await self._reader

    async def subscribers(self, uri: str) -> int:
        """`touch` called past the stdio connection (it may be closed): the server's count."""
        ctx = CallContext(caller_id="test", caller_zone="public", origin="test")
        answer = await self.catalog.call_tool("docs.touch", {"uri": uri}, ctx)
        return int(answer["structuredContent"]["result"])


@asynccontextmanager
async def _stdio_with_offers(**kw: Any) -> AsyncIterator[_Lines]:
    """serve_stdio over a catalog mounting the offers server (2025-11-25: it takes
    `resources/subscribe`), and a raw client of it; stdin closed at the end."""
    mount = MountConfig(
        name="docs",
        command=sys.executable,
        args=[str(OFFERS_SERVER), "--updates"],
        mode="legacy",
        health_interval_s=0.3,
    )
    async with build_local_catalog(ToolsConfig(entry_points=False, mounts=[mount])) as catalog:
        await catalog.supervisor.wait_running(timeout_s=30)
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        client_in, client_out = await asyncio.open_connection(sock=theirs)
        server = asyncio.create_task(serve_stdio(catalog, reader, writer, **kw))
        lines = _Lines(client_in, client_out, catalog, server)
        try:
            yield lines
        finally:
            await lines.end()
            writer.close()
            await lines.close()


def _held(prefix: str) -> list[asyncio.Task[Any]]:
    """The subscription tasks still running whose names start with `prefix`."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(prefix) and not t.done()]


def _updated(uri: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m.get("method") == UPDATED_METHOD and m["params"]["uri"] == uri


async def test_stdio_legacy_resource_subscriptions_bring_updates_until_unsubscribed() -> None:
    """2025-11-25: `initialize` declares `resources.subscribe`; an unknown URI is refused
    -32602, a known one answered `{}` and its updates written on stdout; more than a
    session may hold are refused; `resources/unsubscribe` ends it at the server."""
    async with _stdio_with_offers() as client:
        init = await client.ask("initialize", {"protocolVersion": "2025-11-25"})
        assert init["result"]["capabilities"]["resources"] == {
            "listChanged": True,
            "subscribe": True,
        }
        refused = await client.ask("resources/subscribe", {"uri": "nope://x"})
        assert refused["error"]["code"] == INVALID_PARAMS
        assert (await client.ask("resources/subscribe", {"uri": GREETING}))["result"] == {}
        await client.touched(GREETING)
        update = await client.first(_updated(GREETING))
        assert update["params"] == {"uri": GREETING}
        # The bound of a session (colour://{name} is a template: any name is offered).
        for i in range(MAX_SUBSCRIPTIONS_PER_SESSION - 1):
            answer = await client.ask("resources/subscribe", {"uri": f"colour://c{i}"})
            assert answer["result"] == {}
        over = await client.ask("resources/subscribe", {"uri": "colour://one-too-many"})
        assert over["error"]["code"] == INVALID_PARAMS
        assert over["error"]["data"]["limit"] == MAX_SUBSCRIPTIONS_PER_SESSION
        assert (await client.ask("resources/unsubscribe", {"uri": GREETING}))["result"] == {}

        async def unsubscribed() -> bool:
            return await client.touch(GREETING) == 0

        await async_wait_for(unsubscribed, timeout_s=30, what="the server unsubscribed")
        # A 2026-07-28 request has no session: as over HTTP, no such method.
        modern = await client.ask("resources/subscribe", {"uri": GREETING, "_meta": MODERN_META})
        assert modern["error"]["code"] == METHOD_NOT_FOUND

        async def held() -> bool:  # its subscribe call reaches the mount in the background
            return await client.subscribers("colour://c0") == 1

        await async_wait_for(held, timeout_s=30, what="the server subscribed to colour://c0")
        # stdin closed: the connection's subscription tasks end (left running, each would
        # call the mount again whenever its call ends), and so do they at the server.
        await client.end()

        await async_wait_until(
            lambda: not _held("mcp-subscription:stdio:"), what="the subscriptions' tasks ended"
        )

        async def ended() -> bool:
            return await client.subscribers("colour://c0") == 0

        await async_wait_for(ended, timeout_s=30, what="the server unsubscribed at stdin's end")


async def test_stdio_legacy_client_gets_resources_list_changed() -> None:
    async with _stdio_with_offers() as client:
        await client.ask("initialize", {"protocolVersion": "2025-11-25"})
        add = {"name": "docs.add_note", "arguments": {"name": "n", "text": "hi"}}
        assert "error" not in await client.ask("tools/call", add)
        for method in LIST_CHANGED:
            await client.first(lambda m, method=method: m.get("method") == method)


async def test_stdio_listen_honours_list_changes_and_resource_subscriptions() -> None:
    """2026-07-28: `server/discover` declares `resources.subscribe`; a listen is
    acknowledged with exactly the flags and URIs honoured (as over HTTP), carries the
    updates of its URIs and the list changes it asked for, each with its id in `_meta`;
    cancelling it ends its subscriptions at the server; listens are bounded; closing
    stdin ends the others gracefully."""
    async with _stdio_with_offers(max_listeners=2) as client:
        discover = await client.ask("server/discover", {"_meta": MODERN_META})
        assert discover["result"]["capabilities"]["resources"]["subscribe"] is True
        for bad in ("nope://x", [1], [f"nope://{i}" for i in range(17)]):
            wanted = {"resourceSubscriptions": bad}
            refused = await client.ask("subscriptions/listen", {"notifications": wanted})
            assert refused["error"]["code"] == INVALID_PARAMS, bad
        wanted = {
            "toolsListChanged": True,
            "resourcesListChanged": True,
            "promptsListChanged": True,
            "resourceSubscriptions": ["nope://x", GREETING],
        }
        client.send(
            {
                "id": "listen-1",
                "method": "subscriptions/listen",
                "params": {"notifications": wanted},
            }
        )
        ack = await client.first(
            lambda m: m.get("method") == "notifications/subscriptions/acknowledged"
        )
        assert ack["params"] == {
            "notifications": {**wanted, "resourceSubscriptions": [GREETING]},
            "_meta": {SUBSCRIPTION_ID: "listen-1"},
        }
        await client.touched(GREETING)
        update = await client.first(_updated(GREETING))
        assert update["params"]["_meta"] == {SUBSCRIPTION_ID: "listen-1"}
        add = {"name": "docs.add_note", "arguments": {"name": "m", "text": "hi"}}
        assert "error" not in await client.ask("tools/call", {**add, "_meta": MODERN_META})
        for method in LIST_CHANGED:
            changed = await client.first(lambda m, method=method: m.get("method") == method)
            assert changed["params"]["_meta"] == {SUBSCRIPTION_ID: "listen-1"}
        # Bounded: a second listen opens (tools only), a third is refused.
        client.send(
            {
                "id": "listen-2",
                "method": "subscriptions/listen",
                "params": {"notifications": {"toolsListChanged": True}},
            }
        )
        await client.first(
            lambda m: m.get("params", {}).get("_meta") == {SUBSCRIPTION_ID: "listen-2"}
        )
        busy = await client.ask(
            "subscriptions/listen", {"notifications": {"toolsListChanged": True}}
        )
        assert busy["error"]["code"] == OVERLOADED
        # Cancelling the first ends its subscription at the server.
        listen_1 = "mcp-subscription:stdio-listen-listen-1:"
        assert _held(listen_1)
        client.send({"method": "notifications/cancelled", "params": {"requestId": "listen-1"}})
        await async_wait_until(lambda: not _held(listen_1), what="the listen's tasks ended")

        async def unsubscribed() -> bool:
            return await client.touch(GREETING) == 0

        await async_wait_for(unsubscribed, timeout_s=30, what="the server unsubscribed")
    # stdin closed: the open listen's request answered (its graceful end), not the cancelled one's.
    ends = [m for m in client.seen if m.get("id") in ("listen-1", "listen-2")]
    assert ends == [
        {"jsonrpc": "2.0", "id": "listen-2", "result": {"_meta": {SUBSCRIPTION_ID: "listen-2"}}}
    ]


async def test_stdio_refuses_a_subscribe_before_initialize_and_a_reused_id_of_a_listen() -> None:
    """As over HTTP (no session yet), a 2025-11-25 `resources/subscribe` before
    `initialize` is refused -32600. A request reusing an open listen's id is refused
    with a null id: with the listen's id it would answer, and so end, the listen."""
    async with _stdio_with_offers() as client:
        early = await client.ask("resources/subscribe", {"uri": GREETING})
        assert early["error"]["code"] == INVALID_REQUEST
        listen = {"notifications": {"toolsListChanged": True}, "_meta": MODERN_META}
        client.send({"id": "L", "method": "subscriptions/listen", "params": listen})
        await client.first(lambda m: m.get("params", {}).get("_meta") == {SUBSCRIPTION_ID: "L"})
        client.send({"id": "L", "method": "tools/list", "params": {"_meta": MODERN_META}})
        dup = await client.first(lambda m: "Duplicate" in m.get("error", {}).get("message", ""))
        assert dup["id"] is None and dup["error"]["code"] == INVALID_REQUEST
        # The listen is still open: its list changes still come, then its graceful end.
        add = {"name": "docs.add_note", "arguments": {"name": "d", "text": "hi"}}
        assert "error" not in await client.ask("tools/call", {**add, "_meta": MODERN_META})
        await client.first(
            lambda m: (
                m.get("method") == LIST_CHANGED[0]
                and m["params"]["_meta"] == {SUBSCRIPTION_ID: "L"}
            )
        )
    assert [m for m in client.seen if m.get("id") == "L"] == [
        {"jsonrpc": "2.0", "id": "L", "result": {"_meta": {SUBSCRIPTION_ID: "L"}}}
    ]


async def test_stdio_a_listen_waiting_to_be_held_leaves_the_input_read() -> None:
    """With `confirm_subscriptions`, a provider that never says it holds a URI (the
    offers server is not a bridge): a listen waiting on it does not stop the input; a
    ping is answered meanwhile and `notifications/cancelled` ends the listen, unanswered,
    with its subscription. A `resources/subscribe` cancelled while it waits ends its
    subscription as well (its client got -32800, and no updates)."""
    async with _stdio_with_offers(confirm_subscriptions=True) as client:
        await client.ask("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})
        listen = {"notifications": {"resourceSubscriptions": [GREETING]}, "_meta": MODERN_META}
        client.send({"id": "L", "method": "subscriptions/listen", "params": listen})
        waiting = "mcp-subscription:stdio-listen-L:"
        await async_wait_until(lambda: _held(waiting), what="the listen's subscription")
        assert "error" not in await client.ask("ping")
        client.send({"method": "notifications/cancelled", "params": {"requestId": "L"}})
        await async_wait_until(lambda: not _held(waiting), what="the listen's task ended")
        client.send({"id": "S", "method": "resources/subscribe", "params": {"uri": GREETING}})
        await async_wait_until(lambda: _held("mcp-subscription:stdio:"), what="subscribing")
        client.send({"method": "notifications/cancelled", "params": {"requestId": "S"}})
        cancelled = await client.first(lambda m: m.get("id") == "S")
        assert cancelled["error"]["code"] == REQUEST_CANCELLED
        await async_wait_until(
            lambda: not _held("mcp-subscription:stdio:"), what="the subscribe's task ended"
        )

        async def unsubscribed() -> bool:
            return await client.subscribers(GREETING) == 0

        await async_wait_for(unsubscribed, timeout_s=30, what="the server unsubscribed")
        assert "error" not in await client.ask("ping")
    assert not [m for m in client.seen if m.get("id") == "L"]


async def test_stdio_subscriptions_not_held_in_time_are_refused() -> None:
    """A subscription its provider does not hold within the bound is refused -32015
    (the listen as a whole, the 2025-11-25 subscribe), and ends."""
    async with _stdio_with_offers(confirm_subscriptions=True, confirm_timeout_s=0.5) as client:
        await client.ask("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})
        wanted = {"resourceSubscriptions": [GREETING, "colour://red"]}
        listen = await client.ask(
            "subscriptions/listen", {"notifications": wanted, "_meta": MODERN_META}
        )
        assert listen["error"]["code"] == PROVIDER_ERROR
        assert listen["error"]["data"]["reason"] == "subscription_timeout"
        subscribe = await client.ask("resources/subscribe", {"uri": GREETING})
        assert subscribe["error"]["code"] == PROVIDER_ERROR
        assert "within 0.5 s" in subscribe["error"]["message"]
        await async_wait_until(
            lambda: not _held("mcp-subscription:stdio"), what="the subscriptions' tasks ended"
        )


async def test_updates_a_failed_write_did_not_send_stay_pending() -> None:
    """A stream that breaks mid-way (a GET stream's client gone) loses at most the update
    being written: the rest wait for the session's next stream."""
    updates = SessionUpdates(lambda: None)
    for i in range(10):
        await updates.notify(UPDATED_METHOD, {"uri": f"r://{i}"})
    written: list[str] = []

    async def breaks_at_third(message: dict[str, Any]) -> None:
        if len(written) == 2:
            raise ConnectionResetError("client gone")
        written.append(message["params"]["uri"])

    with pytest.raises(ConnectionResetError):
        await updates.send(breaks_at_third)
    assert written == ["r://0", "r://1"]
    assert list(updates.pending) == [f"r://{i}" for i in range(3, 10)]
