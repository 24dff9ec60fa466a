"""Logs and server-to-client requests across the mesh, three real nodes.

A mounts `ask_server.py` (the official SDK's server, stdio, 2025-11-25), whose tools log
and ask their client for sampling, elicitation and roots. B is a plain peer. The
official SDK client on C calls them: the requests travel back through C to the client's
callbacks and the answers travel back to the server (the tool's result shows them); log
notifications arrive at the level the client set. Bad input: a client answering
garbage, a client that never answers, a client without the capability, and a
2026-07-28 client (no back channel) get clear errors, and no request stays pending.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from tests.integration.harness import NodeProcess, counters
from tests.integration.sdk_client import MODES, sdk_client
from tests.integration.test_tools_mesh import Mesh, _modern, _post, _start_three, _stop
from tests.polling import async_wait_for
from vsmcp.node.mcp.protocol import PROVIDER_ERROR, REQUEST_CANCELLED

pytestmark = pytest.mark.integration

SERVER = Path(__file__).with_name("ask_server.py")
A_CONFIG = f"""
[mesh]
preset = "local"
[tools]
entry_points = false
[[tools.mounts]]
name = "ask"
command = "{sys.executable}"
args = ["{SERVER}"]
mode = "legacy"
only_call_fallback = true
[[tools.plugins]]
name = "plugin.ask"
target = "tests.integration.asking_plugin:ask"
"""
PLAIN_CONFIG = """
[mesh]
preset = "local"
[tools]
entry_points = false
"""
# A client that never answers is given up on within the call's time limit.
CALL_TIMEOUT_S = 20
C_CONFIG = PLAIN_CONFIG + f"timeout_s = {CALL_TIMEOUT_S}\n"
TOOLS = {"ask.chatty", "ask.ask_llm", "ask.ask_name", "ask.roots", "plugin.ask"}
JSON_SSE = "application/json, text/event-stream"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("client-requests")
    three = _start_three(base, (A_CONFIG, PLAIN_CONFIG, C_CONFIG), [])
    try:

        async def listed() -> bool:
            return {t["name"] for t in three.c.get_json("/api/tools")["tools"]} >= TOOLS

        asyncio.run(async_wait_for(listed, timeout_s=30, what="the ask.* tools of A at C"))
        yield three
    finally:
        _stop(three)


def _metric(node: NodeProcess, name: str, label: str) -> float:
    _, body, _ = node.get("/metrics")
    found = re.search(rf'^{name}\{{[^}}]*="{label}"\}} (\S+)$', body.decode(), re.M)
    assert found, f"{name}{{{label}}} not in /metrics"
    return float(found.group(1))


async def _nothing_pending(mesh: Mesh) -> None:
    async def none_left() -> bool:
        return all(
            _metric(node, "vsmcp_client_requests_pending", where) == 0
            for node in (mesh.a, mesh.c)
            for where in ("gateway", "relay")
        )

    await async_wait_for(none_left, timeout_s=20, what="no server-to-client request pending")


def _delta(before: dict[str, int], node: NodeProcess, outcome: str) -> int:
    """How much `vsmcp_client_requests_total{outcome}` at `node` grew since `before`."""
    return counters(node, "vsmcp_client_requests").get(outcome, 0) - before.get(outcome, 0)


def _text(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


async def _sampling(
    context: Any, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    question = params.messages[0].content
    assert isinstance(question, types.TextContent)
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=f"echo of {question.text}"),
        model="model-at-c",
    )


async def _elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    assert params.message == "What is your name?"
    return types.ElicitResult(action="accept", content={"name": "Ada"})


async def _roots(context: Any) -> types.ListRootsResult:
    return types.ListRootsResult(roots=[types.Root(uri="file:///work/c", name="work")])


@pytest.mark.parametrize("mode", MODES)
async def test_sampling_elicitation_roots_and_logs_through_the_mesh(mesh: Mesh, mode: str) -> None:
    """Both revisions: 2025-11-25 asks on the call's stream and sets its level with
    logging/setLevel; 2026-07-28 gets `input_required` rounds and opts in per request."""
    logs: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async with sdk_client(
        mesh.url,
        mode,
        sampling_callback=_sampling,
        elicitation_callback=_elicitation,
        list_roots_callback=_roots,
        logging_callback=on_log,
        log_level="info" if mode == "auto" else None,
    ) as client:
        if mode == "legacy":
            await client.set_logging_level("info")
        chatted = await client.call_tool("ask.chatty", {})
        assert not chatted.is_error and _text(chatted) == "chatted"

        async def both_logged() -> bool:
            return len(logs) >= 2

        await async_wait_for(both_logged, timeout_s=10, what="chatty's log lines at C")
        # At level info: the info and warning lines, not the debug one (in either order:
        # the mount's SDK hands each notification to a task of its own).
        assert sorted((p.level, p.data) for p in logs) == [
            ("info", "chatty: info line"),
            ("warning", "chatty: warning line"),
        ]

        sampled = await client.call_tool("ask.ask_llm", {"question": "how far is A?"})
        assert not sampled.is_error, _text(sampled)
        assert _text(sampled) == "model model-at-c said: echo of how far is A?"
        named = await client.call_tool("ask.ask_name", {})
        assert _text(named) == "accepted: Ada"
        rooted = await client.call_tool("ask.roots", {})
        assert _text(rooted) == "file:///work/c"
        # A plugin on A asks through `CallContext.client` the same way.
        heard = await client.call_tool("plugin.ask", {"question": "plugins too?"})
        assert _text(heard) == "plugin heard: echo of plugins too?"

        async def plugin_logged() -> bool:
            return ("notice", "plugin asks") in [(p.level, p.data) for p in logs]

        await async_wait_for(plugin_logged, timeout_s=10, what="the plugin's log line at C")
    await _nothing_pending(mesh)
    assert _metric(mesh.c, "vsmcp_client_requests_pending", "gateway") == 0


async def test_a_2026_07_28_retry_with_an_unknown_state_is_refused(mesh: Mesh) -> None:
    body, headers = _modern(
        "tools/call", {"name": "ask.ask_llm", "arguments": {"question": "q"}}, "ask.ask_llm"
    )
    body["params"]["requestState"] = "made-up"
    body["params"]["_meta"] = {
        **body["params"]["_meta"],
        "io.modelcontextprotocol/clientCapabilities": {"sampling": {}},
    }
    status, _, reply = await _post(mesh.url, body, headers=headers)
    assert status == 400
    assert "unknown or expired requestState" in reply["error"]["message"]


async def test_a_client_without_the_capability_gets_a_clear_error(mesh: Mesh) -> None:
    async with sdk_client(mesh.url, "legacy", sampling_callback=_sampling) as client:
        # The server's tool fails on the refusal: its error names the missing capability.
        with pytest.raises(MCPError) as refused:
            await client.call_tool("ask.ask_name", {})
        assert "did not declare the 'elicitation' capability" in refused.value.error.message
        # Its sampling still works in the same session.
        sampled = await client.call_tool("ask.ask_llm", {"question": "still there?"})
        assert _text(sampled) == "model model-at-c said: echo of still there?"
    await _nothing_pending(mesh)


# -- a raw 2025-11-25 client: garbage answers, no answers --------------------------------


class RawSession:
    """A 2025-11-25 session over plain HTTP that declares sampling."""

    def __init__(self, http: aiohttp.ClientSession, url: str, session_id: str) -> None:
        self.http, self.url, self.id = http, url, session_id

    async def post(self, message: dict[str, Any]) -> aiohttp.ClientResponse:
        return await self.http.post(
            self.url,
            data=json.dumps(message).encode(),
            headers={
                "Content-Type": "application/json",
                "Accept": JSON_SSE,
                "Mcp-Session-Id": self.id,
                "MCP-Protocol-Version": "2025-11-25",
            },
        )


@asynccontextmanager
async def _raw_session(url: str) -> AsyncIterator[RawSession]:
    async with aiohttp.ClientSession() as http:
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {"sampling": {}},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        }
        async with http.post(
            url, json=init, headers={"Accept": JSON_SSE, "Content-Type": "application/json"}
        ) as r:
            assert r.status == 200
            session = RawSession(http, url, r.headers["Mcp-Session-Id"])
        yield session


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    async for line in response.content:
        if line.startswith(b"data: "):
            yield json.loads(line[6:])


async def _call_and_answer(
    url: str, answer: dict[str, Any] | None, *, cancel: bool = False
) -> dict[str, Any]:
    """Call ask.ask_llm in a raw session; answer its sampling request with `answer`
    (None: never), or cancel the call then; the call's final message."""
    async with _raw_session(url) as session:
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "ask.ask_llm", "arguments": {"question": "q"}},
        }
        response = await session.post(call)
        asked = False
        async with response:
            async for message in _events(response):
                if message.get("method") == "sampling/createMessage":
                    assert not asked
                    asked = True
                    assert message["params"]["messages"][0]["content"]["text"] == "q"
                    if cancel:
                        cancelled = {
                            "jsonrpc": "2.0",
                            "method": "notifications/cancelled",
                            "params": {"requestId": 1},
                        }
                        assert (await session.post(cancelled)).status == 202
                    elif answer is not None:
                        reply = await session.post(
                            {"jsonrpc": "2.0", "id": message["id"], **answer}
                        )
                        assert reply.status == 202
                elif message.get("id") == 1:
                    assert asked, "the sampling request never reached the client"
                    return message
    raise AssertionError("no answer to the call")


def _provider_error(final: dict[str, Any]) -> str:
    """The message of the call's error: the server's tool failed on the refused request
    and the mount passes its error on as the provider's."""
    assert final["error"]["code"] == PROVIDER_ERROR, final
    message: str = final["error"]["message"]
    return message


async def test_a_garbage_answer_to_sampling_is_refused_at_both_ends(mesh: Mesh) -> None:
    before = counters(mesh.c, "vsmcp_client_requests")
    final = await _call_and_answer(mesh.url, {"result": {"role": "robot", "content": 7}})
    assert "the client's answer is malformed: 'role' must be 'user' or 'assistant'" in (
        _provider_error(final)
    )
    assert _delta(before, mesh.c, "malformed_answer") >= 1
    await _nothing_pending(mesh)


async def test_an_error_answer_reaches_the_provider(mesh: Mesh) -> None:
    final = await _call_and_answer(
        mesh.url, {"error": {"code": -1, "message": "user rejected sampling"}}
    )
    assert "the client answered error -1: user rejected sampling" in _provider_error(final)
    await _nothing_pending(mesh)


async def test_a_client_that_never_answers_times_out_and_nothing_stays_pending(
    mesh: Mesh,
) -> None:
    before = counters(mesh.c, "vsmcp_client_requests")
    final = await _call_and_answer(mesh.url, None)
    assert "the client did not answer within" in _provider_error(final)
    assert _delta(before, mesh.c, "timeout") >= 1
    await _nothing_pending(mesh)


async def test_a_cancelled_call_ends_its_request_at_both_ends(mesh: Mesh) -> None:
    before = counters(mesh.c, "vsmcp_client_requests")
    final = await _call_and_answer(mesh.url, None, cancel=True)
    assert final["error"]["code"] == REQUEST_CANCELLED
    await _nothing_pending(mesh)
    assert _delta(before, mesh.c, "cancelled") >= 1
