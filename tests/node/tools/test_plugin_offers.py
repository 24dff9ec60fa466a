"""Resources and prompts of Python functions (`offers_tool`), served by the gateway core
over a real `LocalCatalog`, as an entry point's unit would be."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from vsmcp.node.mcp.protocol import INVALID_PARAMS, Caller, McpCore, Message, error_object
from vsmcp.node.tools.functions import FunctionProvider
from vsmcp.node.tools.plugin_offers import PluginPrompt, PluginResource, offers_tool
from vsmcp.node.tools.registry import LocalCatalog

CALLER = Caller("t", "public", "test")


async def motd() -> dict[str, Any]:
    return {"message": "hello"}


def greet(name: str, tone: str = "warm") -> str:
    return f"Greet {name} ({tone})."


@pytest.fixture
async def core() -> AsyncIterator[McpCore]:
    tool = offers_tool(
        "entry.notes",
        resources=[
            PluginResource("notes://motd", motd, "motd", mime_type="application/json"),
            PluginResource("notes://plain", lambda: "plain text", "plain"),
        ],
        prompts=[PluginPrompt("greet", greet, "Greet someone.", ("name", "tone"))],
    )
    catalog = LocalCatalog()
    catalog.add(FunctionProvider("entry:notes", lambda: [tool]))
    async with catalog:
        await catalog.supervisor.wait_running(timeout_s=10)
        yield McpCore(catalog)


async def _ask(core: McpCore, method: str, params: dict[str, Any]) -> dict[str, Any]:
    message = Message.of({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    return await core.handle(message, CALLER, modern=False)


async def test_plugin_resources_and_prompts_are_listed_read_and_got(core: McpCore) -> None:
    listed = await _ask(core, "resources/list", {})
    assert [r["uri"] for r in listed["resources"]] == ["notes://motd", "notes://plain"]
    prompts = (await _ask(core, "prompts/list", {}))["prompts"]
    assert prompts[0]["arguments"] == [
        {"name": "name", "required": True},
        {"name": "tone", "required": False},
    ]
    motd_read = await _ask(core, "resources/read", {"uri": "notes://motd"})
    assert json.loads(motd_read["contents"][0]["text"]) == {"message": "hello"}
    assert motd_read["contents"][0]["mimeType"] == "application/json"
    plain = await _ask(core, "resources/read", {"uri": "notes://plain"})
    assert plain["contents"][0]["text"] == "plain text"
    got = await _ask(core, "prompts/get", {"name": "greet", "arguments": {"name": "Ada"}})
    assert got["messages"] == [
        {"role": "user", "content": {"type": "text", "text": "Greet Ada (warm)."}}
    ]


async def test_a_prompt_without_its_required_argument_is_refused(core: McpCore) -> None:
    message = Message.of(
        {"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": "greet"}}
    )
    with pytest.raises(Exception) as caught:
        await core.handle(message, CALLER, modern=False)
    error = error_object(caught.value)
    assert error["code"] == INVALID_PARAMS and "name" in error["message"]
