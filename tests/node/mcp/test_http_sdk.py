"""The official SDK client (auto = 2026-07-28, legacy = 2025-11-25) against our /mcp."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.types import EmptyResult

from tests.integration.sdk_client import mcp_http_client
from tests.node.mcp.conftest import OPS_TOKEN, PUBLIC_TOKEN, Server
from tests.node.slow_call import cancel_once_started
from tests.polling import async_wait_until
from vsmcp.node.mcp.protocol import INVALID_PARAMS, RATE_LIMITED, ZONE_DENIED

MODES = ["auto", "legacy"]


@asynccontextmanager
async def connect(server: Server, mode: str, token: str | None = None) -> AsyncIterator[Client]:
    if token is None:
        target: Any = server.url
        async with Client(target, mode=mode, cache=None) as client:
            yield client
        return
    async with mcp_http_client({"Authorization": f"Bearer {token}"}) as http:
        transport = streamable_http_client(server.url, http_client=http)
        async with Client(transport, mode=mode, cache=None) as client:
            yield client


@pytest.mark.parametrize("mode", MODES)
async def test_list_and_call(server: Server, mode: str) -> None:
    async with connect(server, mode) as client:
        assert client.protocol_version == ("2026-07-28" if mode == "auto" else "2025-11-25")
        names = [t.name for t in (await client.list_tools()).tools]
        assert names == ["add", "echo", "slow", "vsm.peers", "vsm.status"]
        echoed = await client.call_tool("echo", {"text": "hello"})
        assert echoed.content[0].text == "hello"  # type: ignore[union-attr]
        added = await client.call_tool("add", {"a": 20, "b": 22})
        assert added.structured_content == {"sum": 42}


@pytest.mark.parametrize("mode", MODES)
async def test_progress_notifications_arrive(server: Server, mode: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with connect(server, mode) as client:
        result = await client.call_tool("slow", {"steps": 3}, progress_callback=on_progress)
    assert result.content[0].text == "slow done"  # type: ignore[union-attr]
    assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


@pytest.mark.parametrize("mode", MODES)
async def test_cancellation_cancels_the_call_on_the_server(server: Server, mode: str) -> None:
    async with connect(server, mode) as client:
        await cancel_once_started(client)


@pytest.mark.parametrize("mode", MODES)
async def test_zone_denial_names_the_policy(server: Server, mode: str) -> None:
    async with connect(server, mode, token=PUBLIC_TOKEN) as client:
        assert "ops.restart" not in [t.name for t in (await client.list_tools()).tools]
        with pytest.raises(MCPError) as err:
            await client.call_tool("ops.restart", {"a": 1, "b": 2})
    assert err.value.code == ZONE_DENIED
    assert "zone-order" in err.value.error.message
    assert err.value.error.data["policy"] == "zone-order"
    assert err.value.error.data["zone"] == "public"
    assert err.value.error.data["tool_zone"] == "ops"
    async with connect(server, mode, token=OPS_TOKEN) as client:
        result = await client.call_tool("ops.restart", {"a": 1, "b": 2})
        assert result.structured_content == {"sum": 3}


@pytest.mark.parametrize("mode", MODES)
async def test_rate_limit_gives_retry_after(server: Server, mode: str) -> None:
    async with connect(server, mode) as client:
        await client.call_tool("vsm.status", {})
        with pytest.raises(MCPError) as err:
            await client.call_tool("vsm.status", {})
    assert err.value.code == RATE_LIMITED
    assert err.value.error.data["limit"] == "per-tool"
    assert err.value.error.data["retry_after_s"] > 0


@pytest.mark.parametrize("mode", MODES)
async def test_unknown_tool_and_bad_arguments(server: Server, mode: str) -> None:
    async with connect(server, mode) as client:
        with pytest.raises(MCPError) as err:
            await client.call_tool("nope", {})
        assert err.value.code == INVALID_PARAMS
        assert "nope" in err.value.error.message
        with pytest.raises(MCPError) as err:
            await client.call_tool("add", {"a": "x", "b": 1})
        assert err.value.code == INVALID_PARAMS
        assert err.value.error.data["path"] == "arguments.a"


async def test_legacy_ping(server: Server) -> None:
    async with connect(server, "legacy") as client:
        (session,) = server.gateway.sessions.values()
        before = session.last_seen
        # The SDK warns that ping is gone from 2026-07-28: expect exactly that warning.
        with pytest.warns(MCPDeprecationWarning, match="ping"):
            result = await client.send_ping()
        assert isinstance(result, EmptyResult)
        # The ping reached our session (it is what keeps an idle session alive).
        assert session.last_seen > before


async def test_tools_list_changed_reaches_a_listener(server: Server) -> None:
    from vsmcp.node.tools.functions import FunctionProvider, PluginTool

    async with connect(server, "auto") as client, client.listen(tools_list_changed=True) as sub:
        assert sub.honored.tools_list_changed
        server.catalog.add(
            FunctionProvider(
                "plugin:late", lambda: [PluginTool(name="late", fn=lambda arguments: "x")]
            )
        )
        with anyio.fail_after(10):
            async for _event in sub:
                break
        names = [t.name for t in (await client.list_tools()).tools]
        assert "late" in names


async def test_legacy_session_stream_carries_list_changed(server: Server) -> None:
    from vsmcp.node.tools.functions import FunctionProvider, PluginTool

    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if getattr(getattr(message, "root", message), "method", None) == (
            "notifications/tools/list_changed"
        ):
            changed.set()

    async with Client(server.url, mode="legacy", cache=None, message_handler=on_message) as client:
        await async_wait_until(
            lambda: any(s.stream_open for s in server.gateway.sessions.values()),
            what="GET stream open",
        )
        server.catalog.add(
            FunctionProvider(
                "plugin:later", lambda: [PluginTool(name="later", fn=lambda arguments: "x")]
            )
        )
        with anyio.fail_after(10):
            await changed.wait()
        assert "later" in [t.name for t in (await client.list_tools()).tools]
