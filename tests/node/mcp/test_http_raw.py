"""Raw HTTP against /mcp: malformed bodies, Origin, tokens, sessions, bounds."""

from __future__ import annotations

import json
import sys
from typing import Any, Final

import aiohttp
import pytest

from tests.node.mcp.conftest import PUBLIC_TOKEN, Server, serve, tools_config
from tests.polling import async_wait_until
from tests.skips import require_module
from vsmcp.node.mcp.protocol import (
    FORBIDDEN_HOST,
    FORBIDDEN_ORIGIN,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NOT_ACCEPTABLE,
    PARSE_ERROR,
    SESSION_NOT_FOUND,
    TOO_LARGE,
    UNAUTHORIZED,
    UNSUPPORTED_MEDIA_TYPE,
    encode,
)
from vsmcp.node.mcp.subscriptions import MAX_SUBSCRIPTIONS_PER_SESSION
from vsmcp.node.tools.client_channel import UPDATED_METHOD
from vsmcp.node.tools.config import MountConfig, ToolsConfig
from vsmcp.node.tools.node_offers import STATUS_URI
from vsmcp.node.tools.registry import build_local_catalog

MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}


def modern_headers(method: str, name: str | None = None) -> dict[str, str]:
    headers = {
        "Accept": ACCEPT_BOTH,
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": method,
    }
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


ACCEPT_BOTH = "application/json, text/event-stream"
LEGACY_INIT: Final = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


async def post(
    url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    """POST `body` (bytes as is, else as JSON) with the headers the spec requires of a
    client (`Accept` both types, `Content-Type: application/json`) unless overridden."""
    data = body if isinstance(body, bytes) else encode(body)
    headers = {"Accept": ACCEPT_BOTH, "Content-Type": "application/json", **(headers or {})}
    headers = {k: v for k, v in headers.items() if v is not None}
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=data, headers=headers) as resp,
    ):
        payload = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, dict(resp.headers), payload


async def test_malformed_json_is_a_parse_error(server: Server) -> None:
    status, _, body = await post(server.url, b"{not json", modern_headers("tools/list"))
    assert status == 400
    assert body["error"]["code"] == PARSE_ERROR
    assert body["id"] is None


async def test_json_nested_too_deeply_is_called_so(server: Server) -> None:
    deep = (
        b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": '
        + (b"[" * 10_000 + b"]" * 10_000)
        + b"}}"
    )
    status, _, body = await post(server.url, deep, modern_headers("ping"))
    assert status == 400
    assert body["error"]["code"] == PARSE_ERROR
    assert "nested too deeply" in body["error"]["message"]
    assert body["error"]["data"] == {"reason": "too_deep"}


async def test_a_huge_argument_is_not_echoed_back_in_full(server: Server) -> None:
    huge = "x" * 500_000
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    params = {"name": "add", "arguments": {"a": huge, "b": 1}, "_meta": META}
    status, _, body = await post(
        server.url, {**call, "params": params}, modern_headers("tools/call", "add")
    )
    assert (status, body["error"]["code"]) == (400, INVALID_PARAMS)
    assert len(encode(body)) < 2000
    assert body["error"]["message"].endswith("is not of type 'integer'")
    assert "more chars" in body["error"]["data"]["problem"]
    # An unknown tool's (or method's) long name is not echoed in full either.
    params = {"name": huge, "arguments": {}, "_meta": META}
    status, _, body = await post(
        server.url, {**call, "params": params}, modern_headers("tools/call", "x")
    )
    assert len(encode(body)) < 2000


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"Content-Type": "text/plain"}, 415, UNSUPPORTED_MEDIA_TYPE),
        ({"Content-Type": None}, 415, UNSUPPORTED_MEDIA_TYPE),
        ({"Accept": "application/json"}, 406, NOT_ACCEPTABLE),
        ({"Accept": "text/event-stream"}, 406, NOT_ACCEPTABLE),
        ({"Accept": ""}, 406, NOT_ACCEPTABLE),
        ({"Accept": "text/event-stream;q=0, */*"}, 406, NOT_ACCEPTABLE),
        ({"Accept": "*/*"}, 200, None),
        ({"Accept": "application/*, text/*;q=0.5"}, 200, None),
        ({"Content-Type": "application/json; charset=utf-8"}, 200, None),
    ],
)
async def test_post_content_type_and_accept_are_checked(
    server: Server, headers: dict[str, Any], status: int, code: int | None
) -> None:
    msg = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": META}}
    got, _, body = await post(server.url, msg, {**modern_headers("server/discover"), **headers})
    assert got == status
    if code is not None:
        assert body["error"]["code"] == code


async def test_get_must_accept_an_event_stream(server: Server) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}},
    }
    _, headers, _ = await post(server.url, init)
    session = {"Mcp-Session-Id": headers["Mcp-Session-Id"]}
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.url, headers={**session, "Accept": "application/json"}) as resp,
    ):
        assert resp.status == 406
        assert (await resp.json())["error"]["code"] == NOT_ACCEPTABLE


@pytest.mark.parametrize(
    "payload",
    [[{"jsonrpc": "2.0", "id": 1, "method": "ping"}], {"hello": 1}, 42, {"jsonrpc": "2.0"}],
)
async def test_non_jsonrpc_body_is_an_invalid_request(server: Server, payload: Any) -> None:
    status, _, body = await post(server.url, payload, modern_headers("ping"))
    assert status == 400
    assert body["error"]["code"] == INVALID_REQUEST


async def test_unknown_method(server: Server) -> None:
    msg = {"jsonrpc": "2.0", "id": 7, "method": "tools/frobnicate", "params": {"_meta": META}}
    status, _, body = await post(server.url, msg, modern_headers("tools/frobnicate"))
    assert status == 404
    assert body == {
        "jsonrpc": "2.0",
        "id": 7,
        "error": {
            "code": METHOD_NOT_FOUND,
            "message": "Method not found: 'tools/frobnicate'",
            "data": {"method": "tools/frobnicate"},
        },
    }


async def test_unknown_tool_and_wrong_arguments(server: Server) -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    params = {"name": "nope", "arguments": {}, "_meta": META}
    status, _, body = await post(
        server.url, {**call, "params": params}, modern_headers("tools/call", "nope")
    )
    assert (status, body["error"]["code"]) == (400, INVALID_PARAMS)
    assert body["error"]["data"]["tool"] == "nope"
    params = {"name": "echo", "arguments": {"text": 3}, "_meta": META}
    status, _, body = await post(
        server.url, {**call, "params": params}, modern_headers("tools/call", "echo")
    )
    assert (status, body["error"]["code"]) == (400, INVALID_PARAMS)
    assert "3 is not of type 'string'" in body["error"]["message"]
    params = {"name": "echo", "arguments": [1], "_meta": META}
    status, _, body = await post(
        server.url, {**call, "params": params}, modern_headers("tools/call", "echo")
    )
    assert body["error"]["code"] == INVALID_PARAMS


async def test_modern_envelope_and_headers_are_checked(server: Server) -> None:
    msg = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    status, _, body = await post(server.url, msg, modern_headers("tools/list"))
    assert (status, body["error"]["code"]) == (400, INVALID_PARAMS)
    msg["params"] = {"_meta": META}
    status, _, body = await post(server.url, msg, modern_headers("tools/call"))
    assert (status, body["error"]["code"]) == (400, -32020)
    status, _, body = await post(
        server.url, msg, {**modern_headers("tools/list"), "MCP-Protocol-Version": "1999-01-01"}
    )
    assert (status, body["error"]["code"]) == (400, -32022)


async def test_bad_origin_is_forbidden(server: Server) -> None:
    msg = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": META}}
    status, _, body = await post(
        server.url, msg, {**modern_headers("server/discover"), "Origin": "http://evil.example"}
    )
    assert status == 403
    assert body["error"]["code"] == FORBIDDEN_ORIGIN
    status, _, body = await post(
        server.url, msg, {**modern_headers("server/discover"), "Origin": "http://localhost:6274"}
    )
    assert status == 200
    assert body["result"]["supportedVersions"] == [MODERN]


async def test_tokens_map_to_zones_and_unknown_tokens_are_refused(server: Server) -> None:
    msg = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
    status, headers, body = await post(
        server.url, msg, {**modern_headers("tools/list"), "Authorization": "Bearer wrong"}
    )
    assert status == 401
    assert body["error"]["code"] == UNAUTHORIZED
    assert headers["WWW-Authenticate"].startswith("Bearer")
    auth = {"Authorization": f"Bearer {PUBLIC_TOKEN}"}
    status, _, body = await post(server.url, msg, {**modern_headers("tools/list"), **auth})
    assert status == 200
    assert "ops.restart" not in [t["name"] for t in body["result"]["tools"]]


async def test_loopback_without_token_refused_when_not_configured() -> None:
    async with build_local_catalog(ToolsConfig(entry_points=False)) as catalog:
        srv, runner = await serve(catalog, loopback_zone=None)
        try:
            msg = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
            status, _, body = await post(srv.url, msg, modern_headers("tools/list"))
            assert status == 401
            assert body["error"]["code"] == UNAUTHORIZED
            auth = {"Authorization": f"Bearer {PUBLIC_TOKEN}"}
            status, _, body = await post(srv.url, msg, {**modern_headers("tools/list"), **auth})
            assert status == 200
        finally:
            await runner.cleanup()


async def test_a_host_not_served_here_is_misdirected_on_every_method() -> None:
    # DNS rebinding: evil.example re-pointed at 127.0.0.1 reaches us with its own name.
    async with build_local_catalog(ToolsConfig(entry_points=False)) as catalog:
        srv, runner = await serve(catalog, allowed_hosts=["localhost", "127.0.0.1", "::1"])
        try:
            msg = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
            port = srv.url.split(":")[2].split("/")[0]
            for host in (
                "evil.example",
                f"evil.example:{port}",
                "127.0.0.2",
                "",
                # What follows a bracketed address, or a second port, is not ignored.
                "[::1]evil.example",
                f"[::1]evil.example:{port}",
                f"[::1]:{port}evil.example",
                f"localhost:{port}:80",
                "localhost evil.example",
                "[::1",
                "::1",
            ):
                status, _, body = await post(
                    srv.url, msg, {**modern_headers("tools/list"), "Host": host}
                )
                assert status == 421, host
                assert body["error"]["code"] == FORBIDDEN_HOST
                assert body["error"]["data"]["host"] == host
            async with (
                aiohttp.ClientSession() as session,
                session.get(srv.url, headers={"Host": "evil.example"}) as response,
            ):
                assert response.status == 421  # GET streams too
            for host in (
                f"localhost:{port}",
                f"127.0.0.1:{port}",
                f"[::1]:{port}",
                "[0:0::1]",
                "LOCALHOST",
            ):
                status, _, body = await post(
                    srv.url, msg, {**modern_headers("tools/list"), "Host": host}
                )
                assert status == 200, host
        finally:
            await runner.cleanup()


async def test_a_long_silent_call_keeps_its_stream_alive_with_sse_comments() -> None:
    async with build_local_catalog(tools_config()) as catalog:
        await catalog.supervisor.wait_running()
        srv, runner = await serve(catalog, sse_keepalive_s=0.05)
        try:
            params = {"name": "slow", "arguments": {"steps": 0, "hold_s": 0.4}, "_meta": META}
            msg = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params}
            async with (
                aiohttp.ClientSession() as http,
                http.post(srv.url, json=msg, headers=modern_headers("tools/call", "slow")) as r,
            ):
                assert r.content_type == "text/event-stream"
                text = (await r.read()).decode()
            assert text.count(": keepalive") >= 2
            lines = text.splitlines()
            events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
            assert [e["id"] for e in events] == [3]
            assert events[0]["result"]["content"][0]["text"] == "slow done"
        finally:
            await runner.cleanup()


async def test_body_size_cap() -> None:
    async with build_local_catalog(ToolsConfig(entry_points=False)) as catalog:
        srv, runner = await serve(catalog, max_body_bytes=1000)
        try:
            big = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": "y" * 2000}}
            status, _, body = await post(srv.url, big, modern_headers("ping"))
            assert status == 413
            assert body["error"]["code"] == TOO_LARGE
        finally:
            await runner.cleanup()


async def test_sessions_are_bounded_and_checked() -> None:
    async with build_local_catalog(ToolsConfig(entry_points=False)) as catalog:
        srv, runner = await serve(catalog, max_sessions=2)
        try:
            ids = []
            for _ in range(3):
                status, headers, body = await post(srv.url, LEGACY_INIT)
                assert status == 200
                assert body["result"]["protocolVersion"] == "2025-11-25"
                ids.append(headers["Mcp-Session-Id"])
            assert list(srv.gateway.sessions) == ids[1:]  # the oldest idle one was evicted
            ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
            status, _, body = await post(srv.url, ping, {"Mcp-Session-Id": ids[0]})
            assert (status, body["error"]["code"]) == (404, SESSION_NOT_FOUND)
            status, _, body = await post(srv.url, ping, {"Mcp-Session-Id": ids[2]})
            assert (status, body["result"]) == (200, {})
            # A session belongs to the caller that created it.
            other = {"Mcp-Session-Id": ids[2], "Authorization": f"Bearer {PUBLIC_TOKEN}"}
            status, _, body = await post(srv.url, ping, other)
            assert status == 404
            status, _, body = await post(srv.url, ping)
            assert (status, body["error"]["code"]) == (400, INVALID_REQUEST)
        finally:
            await runner.cleanup()


async def test_mounted_tool_through_the_gateway() -> None:
    require_module("mcp_server_time")
    from mcp.client.client import Client

    mount = MountConfig(name="time", command=sys.executable, args=["-m", "mcp_server_time"])
    async with build_local_catalog(ToolsConfig(entry_points=False, mounts=[mount])) as catalog:
        await catalog.supervisor.wait_running(timeout_s=30)
        srv, runner = await serve(catalog)
        try:
            for mode in ("auto", "legacy"):
                async with Client(srv.url, mode=mode, cache=None) as client:
                    result = await client.call_tool("time.get_current_time", {"timezone": "UTC"})
                    assert result.is_error is False
                    assert "UTC" in result.content[0].text  # type: ignore[union-attr]
        finally:
            await runner.cleanup()


async def test_resource_subscriptions_are_checked_and_end_with_unsubscribe() -> None:
    async with build_local_catalog(
        ToolsConfig(entry_points=False), status=lambda: {"node": "n1"}
    ) as catalog:
        srv, runner = await serve(catalog)
        try:
            status, headers, body = await post(srv.url, LEGACY_INIT)
            assert body["result"]["capabilities"]["resources"]["subscribe"] is True
            session = {"Mcp-Session-Id": headers["Mcp-Session-Id"]}

            def ask(method: str, uri: str) -> dict[str, Any]:
                return {"jsonrpc": "2.0", "id": 2, "method": method, "params": {"uri": uri}}

            status, _, body = await post(srv.url, ask("resources/subscribe", "nope://x"), session)
            assert body["error"]["code"] == INVALID_PARAMS
            assert "Unknown resource" in body["error"]["message"]
            status, _, body = await post(srv.url, ask("resources/subscribe", STATUS_URI), session)
            assert (status, body["result"]) == (200, {})
            status, _, body = await post(srv.url, ask("resources/unsubscribe", STATUS_URI), session)
            assert (status, body["result"]) == (200, {})
            (state,) = srv.gateway.sessions.values()
            assert state.subscriptions is not None and not state.subscriptions.tasks
            # Stateless (2026-07-28) requests have no session to keep a subscription in.
            modern = {**ask("resources/subscribe", STATUS_URI), "params": {"uri": STATUS_URI}}
            modern["params"]["_meta"] = META
            status, _, body = await post(srv.url, modern, modern_headers("resources/subscribe"))
            assert body["error"]["code"] == METHOD_NOT_FOUND
        finally:
            await runner.cleanup()


async def _frame(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next JSON-RPC message on an SSE response (keepalive comments skipped)."""
    async for line in resp.content:
        if line.startswith(b"data:"):
            message: dict[str, Any] = json.loads(line[5:])
            return message
    raise AssertionError("the stream ended")


async def test_a_listen_stream_holds_its_resource_subscriptions() -> None:
    """2026-07-28: `server/discover` declares `resources.subscribe`; a listen stream's
    `resourceSubscriptions` are honoured for URIs the mesh offers (others left out of
    the acknowledgement), its updates are written on the stream, and closing the stream
    ends its subscriptions. Malformed or too many URIs are refused."""
    async with build_local_catalog(
        ToolsConfig(entry_points=False), status=lambda: {"node": "n1"}
    ) as catalog:
        srv, runner = await serve(catalog)
        try:
            discover = {"jsonrpc": "2.0", "id": 1, "method": "server/discover"}
            discover["params"] = {"_meta": META}
            _, _, body = await post(srv.url, discover, modern_headers("server/discover"))
            assert body["result"]["capabilities"]["resources"]["subscribe"] is True

            def listen(uris: Any) -> dict[str, Any]:
                wanted = {"toolsListChanged": True, "resourceSubscriptions": uris}
                params = {"notifications": wanted, "_meta": META}
                return {"jsonrpc": "2.0", "id": 7, "method": "subscriptions/listen"} | {
                    "params": params
                }

            headers = modern_headers("subscriptions/listen")
            too_many = [f"nope://{i}" for i in range(MAX_SUBSCRIPTIONS_PER_SESSION + 1)]
            for bad in ("nope://x", [1], too_many):
                _, _, body = await post(srv.url, listen(bad), headers)
                assert body["error"]["code"] == INVALID_PARAMS, bad
            async with (
                aiohttp.ClientSession() as http,
                http.post(srv.url, json=listen(["nope://x", STATUS_URI]), headers=headers) as resp,
            ):
                ack = await _frame(resp)
                assert ack["method"] == "notifications/subscriptions/acknowledged"
                assert ack["params"]["notifications"] == {
                    "toolsListChanged": True,
                    "resourceSubscriptions": [STATUS_URI],
                }
                (listener,) = srv.gateway._listeners
                assert listener.updates is not None and listener.subscriptions is not None
                # What a provider's update does (`ClientChannel.notify`): on the stream.
                await listener.updates.notify(UPDATED_METHOD, {"uri": STATUS_URI})
                update = await _frame(resp)
                assert update["method"] == UPDATED_METHOD
                assert update["params"]["uri"] == STATUS_URI
                assert update["params"]["_meta"] == ack["params"]["_meta"]
                held = list(listener.subscriptions.tasks.values())
            await async_wait_until(lambda: not srv.gateway._listeners)
            await async_wait_until(lambda: all(task.done() for task in held))
            assert not listener.subscriptions.tasks
        finally:
            await runner.cleanup()
