"""Many tools (`mcp.max_listed_tools`): a short `tools/list` plus `vsm.find_tools`.

The finder on its own over a made-up tool set, then the official SDK client (both
revisions) against a real /mcp over a real LocalCatalog."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from tests.node.mcp.conftest import OPS_TOKEN, PUBLIC_TOKEN, Server
from tests.node.mcp.test_http_sdk import MODES, connect
from vsmcp.node.mcp.find_tools import FIND_TOOLS, MAX_LIMIT, ToolFinder
from vsmcp.node.mcp.protocol import INVALID_PARAMS
from vsmcp.node.tools.errors import InvalidArguments
from vsmcp.node.tools.model import ToolSpec

WEATHER = ToolSpec(
    name="weather.forecast",
    description="Weather forecast for a city: temperature, rain and wind.",
    input_schema={"type": "object", "properties": {"city": {"type": "string"}}},
)
CONVERT = ToolSpec(
    name="time.convert_time",
    description="Convert a time between time zones.",
    input_schema={
        "type": "object",
        "properties": {"time": {"type": "string"}, "target_timezone": {"type": "string"}},
    },
)
FILLERS = [ToolSpec(name=f"fill.tool_{i:03}", description="Does nothing.") for i in range(40)]
TOOLS = sorted([WEATHER, CONVERT, *FILLERS], key=lambda s: s.name)


def _found(result: Any) -> list[str]:
    return [t["name"] for t in result["structuredContent"]["tools"]]


def test_the_list_is_whole_up_to_the_threshold_then_short() -> None:
    assert ToolFinder(len(TOOLS)).listed(TOOLS) == TOOLS
    short = ToolFinder(5).listed(TOOLS)
    assert [s.name for s in short] == [FIND_TOOLS, *(s.name for s in TOOLS[:4])]
    assert short[0].input_schema["required"] == ["query"]


async def test_a_search_ranks_the_matching_tools_first_with_their_schemas() -> None:
    finder = ToolFinder(5)
    result = await finder.find(TOOLS, {"query": "will it rain in Paris tomorrow? weather"})
    assert _found(result) == ["weather.forecast"]  # the fillers share no word with it
    (tool,) = result["structuredContent"]["tools"]
    assert tool["inputSchema"] == WEATHER.input_schema
    assert result["structuredContent"]["total"] == len(TOOLS)
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]
    assert _found(await finder.find(TOOLS, {"query": "convert timezones"}))[0] == (
        "time.convert_time"
    )
    assert _found(await finder.find(TOOLS, {"query": "quantum chromodynamics"})) == []


async def test_the_limit_caps_the_answer() -> None:
    found = _found(await ToolFinder(5).find(TOOLS, {"query": "does nothing", "limit": 3}))
    assert found == ["fill.tool_000", "fill.tool_001", "fill.tool_002"]  # ties: by name


async def test_the_index_is_built_once_per_tool_set() -> None:
    finder = ToolFinder(5)
    first = await finder._index(TOOLS)
    assert await finder._index(list(TOOLS)) is first  # the same specs: the same index
    assert await finder._index(TOOLS[:-1]) is not first


async def test_variants_listed_anew_at_every_list_share_one_index() -> None:
    """The catalog lists a variant as a fresh copy under `<name>.<digest>` at every
    `tools/list`: equal copies must not build a new index per search."""

    def listed() -> list[ToolSpec]:
        return [replace(spec, name=f"{spec.name}.0badc0de") for spec in TOOLS]

    finder = ToolFinder(5)
    first, second = await asyncio.gather(finder._index(listed()), finder._index(listed()))
    assert first is second
    assert await finder._index(listed()) is first
    # The answer shows the specs listed now (their names), not the indexed copies.
    renamed = [replace(spec, name=f"{spec.name}.0badc0de") for spec in TOOLS]
    found = _found(await finder.find(renamed, {"query": "does nothing", "limit": 1}))
    assert found and found[0].endswith(".0badc0de")


@pytest.mark.parametrize(
    ("arguments", "path"),
    [
        ({}, "query"),
        ({"query": "  "}, "query"),
        ({"query": 7}, "query"),
        ({"query": "x" * 1001}, "query"),
        ({"query": "x", "limit": 0}, "limit"),
        ({"query": "x", "limit": MAX_LIMIT + 1}, "limit"),
        ({"query": "x", "limit": True}, "limit"),
        ({"query": "x", "extra": 1}, "extra"),
    ],
)
async def test_bad_arguments_are_refused_naming_the_argument(
    arguments: dict[str, Any], path: str
) -> None:
    with pytest.raises(InvalidArguments) as refused:
        await ToolFinder(5).find(TOOLS, arguments)
    assert refused.value.data["path"] == path


def test_a_threshold_without_room_for_a_tool_is_refused() -> None:
    with pytest.raises(ValueError, match="room"):
        ToolFinder(1)


@pytest.fixture
async def short(server: Server) -> AsyncIterator[Server]:
    # The public caller may use 5 tools (add, echo, slow, vsm.peers, vsm.status).
    server.gateway.core.finder = ToolFinder(3)
    yield server


@pytest.mark.parametrize("mode", MODES)
async def test_the_sdk_client_gets_a_short_list_finds_and_calls_any_tool(
    short: Server, mode: str
) -> None:
    async with connect(short, mode) as client:
        tools = (await client.list_tools()).tools
        assert [t.name for t in tools] == [FIND_TOOLS, "add", "echo"]
        found = await client.call_tool(FIND_TOOLS, {"query": "the peers of this node"})
        assert not found.is_error
        assert found.structured_content is not None
        names = [t["name"] for t in found.structured_content["tools"]]
        assert names[0] == "vsm.peers"
        assert "ops.restart" not in names  # not the public caller's
        # Unlisted, still called by its name.
        peers = await client.call_tool("vsm.peers", {})
        assert not peers.is_error
        with pytest.raises(MCPError) as bad:
            await client.call_tool(FIND_TOOLS, {"query": ""})
        assert bad.value.code == INVALID_PARAMS
        assert bad.value.error.data["path"] == "query"


@pytest.mark.parametrize("token", [PUBLIC_TOKEN, OPS_TOKEN])
async def test_a_search_finds_only_what_the_caller_may_call(short: Server, token: str) -> None:
    async with connect(short, "auto", token=token) as client:
        found = await client.call_tool(FIND_TOOLS, {"query": "restart"})
        assert found.structured_content is not None
        names = [t["name"] for t in found.structured_content["tools"]]
        assert ("ops.restart" in names) == (token == OPS_TOKEN)


async def test_off_by_default_the_list_is_whole_and_there_is_no_search(server: Server) -> None:
    async with connect(server, "auto") as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert FIND_TOOLS not in names and len(names) == 5
        with pytest.raises(MCPError) as unknown:
            await client.call_tool(FIND_TOOLS, {"query": "x"})
        assert unknown.value.code == INVALID_PARAMS
