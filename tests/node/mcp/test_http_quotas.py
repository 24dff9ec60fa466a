"""Sessions and listen streams are shared fairly: per-caller quotas, and eviction that
takes a caller's own idle session first, so one caller cannot lock out the others."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp

from tests.node.mcp.conftest import PUBLIC_TOKEN, Server, serve
from tests.node.mcp.test_http_raw import ACCEPT_BOTH, META, modern_headers, post
from tests.polling import async_wait_until
from vsmcp.node.mcp.protocol import OVERLOADED, SESSION_NOT_FOUND
from vsmcp.node.tools.config import ToolsConfig
from vsmcp.node.tools.registry import build_local_catalog

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}},
}
PING = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
LISTEN = {
    "jsonrpc": "2.0",
    "id": 3,
    "method": "subscriptions/listen",
    "params": {"notifications": {"toolsListChanged": True}, "_meta": META},
}
TOKEN = {"Authorization": f"Bearer {PUBLIC_TOKEN}"}


@asynccontextmanager
async def gateway(**limits: int) -> AsyncIterator[Server]:
    async with build_local_catalog(ToolsConfig(entry_points=False)) as catalog:
        srv, runner = await serve(catalog, **limits)  # type: ignore[arg-type]
        try:
            yield srv
        finally:
            await runner.cleanup()


def open_streams(srv: Server) -> int:
    return sum(s.stream_open for s in srv.gateway.sessions.values())


async def test_a_caller_holding_streams_cannot_lock_out_another() -> None:
    """An anonymous loopback client opening as many sessions with SSE streams as it can
    gets its quota (4 of 8); a token client can still initialize."""
    async with (
        gateway(max_sessions=8, max_sessions_per_caller=4) as srv,
        aiohttp.ClientSession() as http,
        AsyncExitStack() as streams,
    ):
        refused: list[Any] = []
        held = 0
        for _ in range(8):
            status, headers, body = await post(srv.url, INIT)
            if status != 200:
                refused.append((status, body["error"]))
                continue
            session = {"Mcp-Session-Id": headers["Mcp-Session-Id"], "Accept": ACCEPT_BOTH}
            stream = await streams.enter_async_context(http.get(srv.url, headers=session))
            assert stream.status == 200
            held += 1
            expected = held

            def opened(n: int = expected) -> bool:
                return open_streams(srv) == n

            await async_wait_until(opened, what="stream open")
        assert open_streams(srv) == 4
        assert len(refused) == 4
        assert refused[0][0] == 503
        assert refused[0][1]["code"] == OVERLOADED
        assert refused[0][1]["data"]["limit"] == "sessions_per_caller"
        status, _, body = await post(srv.url, INIT, TOKEN)
        assert status == 200, body


async def test_initialize_floods_evict_only_the_flooder_s_own_sessions() -> None:
    async with gateway(max_sessions=4, max_sessions_per_caller=4) as srv:
        # The anonymous caller fills every slot with idle sessions: a newcomer takes
        # one of them (it holds the most), not nothing.
        for _ in range(4):
            assert (await post(srv.url, INIT))[0] == 200
        status, headers, _ = await post(srv.url, INIT, TOKEN)
        assert status == 200
        mine = {**TOKEN, "Mcp-Session-Id": headers["Mcp-Session-Id"]}
        for _ in range(20):
            assert (await post(srv.url, INIT))[0] == 200
        status, _, body = await post(srv.url, PING, mine)
        assert (status, body["result"]) == (200, {})
        assert len(srv.gateway.sessions) == 4
        # The flooder's oldest sessions went, its newest stayed.
        owners = sorted(s.owner for s in srv.gateway.sessions.values())
        assert owners == ["addr:127.0.0.1"] * 3 + ["token:token-" + owners[-1][12:]]


async def test_eviction_never_takes_a_session_of_a_caller_holding_as_few() -> None:
    async with gateway(max_sessions=2, max_sessions_per_caller=2) as srv:
        status, headers, _ = await post(srv.url, INIT)
        anonymous = {"Mcp-Session-Id": headers["Mcp-Session-Id"]}
        assert (await post(srv.url, INIT, TOKEN))[0] == 200
        # Full, one session each: a third session for the token would take the anonymous
        # caller's only one. Its own idle session goes instead.
        status, _, _ = await post(srv.url, INIT, TOKEN)
        assert status == 200
        status, _, body = await post(srv.url, PING, anonymous)
        assert status == 200, body
        assert (await post(srv.url, PING, {"Mcp-Session-Id": "nope"}))[2]["error"][
            "code"
        ] == SESSION_NOT_FOUND


async def test_listen_streams_have_a_quota_per_caller() -> None:
    async with (
        gateway(max_listeners=4, max_listeners_per_caller=2) as srv,
        aiohttp.ClientSession() as http,
        AsyncExitStack() as streams,
    ):

        async def listen(headers: dict[str, str]) -> aiohttp.ClientResponse:
            headers = {**modern_headers("subscriptions/listen"), **headers}
            return await streams.enter_async_context(
                http.post(srv.url, json=LISTEN, headers=headers)
            )

        statuses = [(await listen({})).status for _ in range(4)]
        assert statuses == [200, 200, 503, 503]
        refused = await (await listen({})).json()
        assert refused["error"]["data"]["limit"] == "listeners_per_caller"
        assert (await listen(TOKEN)).status == 200


async def test_get_streams_count_as_listeners() -> None:
    """`mcp.max_listeners(_per_caller)` say GET streams count: before, only listen
    streams did, so a caller held as many GET streams as it had sessions."""
    async with (
        gateway(
            max_sessions=8, max_sessions_per_caller=8, max_listeners=3, max_listeners_per_caller=2
        ) as srv,
        aiohttp.ClientSession() as http,
        AsyncExitStack() as streams,
    ):

        async def get_stream(headers: dict[str, str]) -> aiohttp.ClientResponse:
            status, answer, body = await post(srv.url, INIT, headers)
            assert status == 200, body
            session = {**headers, "Mcp-Session-Id": answer["Mcp-Session-Id"], "Accept": ACCEPT_BOTH}
            return await streams.enter_async_context(http.get(srv.url, headers=session))

        assert [(await get_stream({})).status for _ in range(2)] == [200, 200]
        refused = await get_stream({})
        assert refused.status == 503
        assert (await refused.json())["error"]["data"]["limit"] == "listeners_per_caller"
        # The same quota as listen streams.
        listen_headers = modern_headers("subscriptions/listen")
        listen = await streams.enter_async_context(
            http.post(srv.url, json=LISTEN, headers=listen_headers)
        )
        assert listen.status == 503
        # Another caller gets the last slot of three, then the node is full.
        assert (await get_stream(TOKEN)).status == 200
        full = await get_stream(TOKEN)
        assert (await full.json())["error"]["data"]["limit"] == "listeners"
    # Every slot is given back when the streams close.
    assert srv.gateway.listeners_of == {}
