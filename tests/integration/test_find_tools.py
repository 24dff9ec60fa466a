"""Many tools across the mesh: node C (`mcp.max_listed_tools = 4`) lists a short list
and `vsm.find_tools`; the official SDK client (both revisions) at C finds a tool that A
offers (a mount of `mcp-server-time`, among padding tools) by words, and calls it and
other unlisted tools by name through the mesh."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp.client.client import Client

from tests.integration.harness import NodeProcess, start_configured, wait_mesh_states
from tests.integration.sdk_client import MODES, sdk_client
from tests.integration.test_planner import A_CONFIG  # A mounts mcp-server-time
from tests.polling import async_wait_for

pytestmark = pytest.mark.integration

MAX_LISTED = 4
PADDING = 12

C_CONFIG = f"""
[mesh]
preset = "local"
[tools]
entry_points = false
[mcp]
max_listed_tools = {MAX_LISTED}
"""


class Pair:
    def __init__(self, a: NodeProcess, c: NodeProcess) -> None:
        self.a, self.c = a, c

    @property
    def url(self) -> str:
        return self.c.url + "/mcp"


async def _wait_searchable(url: str) -> None:
    """Until C's gateway serves A's tools (its catalog follows the registry on its own
    schedule): the search finds the mount's tool and the last padding tool."""

    async def found(client: Client, query: str, name: str) -> bool:
        result = await client.call_tool("vsm.find_tools", {"query": query})
        content = result.structured_content or {}
        return name in [t["name"] for t in content.get("tools", [])]

    async with sdk_client(url) as client:

        async def searchable() -> bool:
            return await found(client, "convert time", "time.convert_time") and await found(
                client, f"pad tool_{PADDING - 1:02}", f"pad.tool_{PADDING - 1:02}"
            )

        await async_wait_for(searchable, timeout_s=30, what="A's tools searchable at C")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    base: Path = tmp_path_factory.mktemp("find-tools")
    nodes: list[NodeProcess] = []
    try:
        a = start_configured(base, nodes, A_CONFIG, "a")
        c = start_configured(base, nodes, C_CONFIG, "c")
        for node in nodes:
            node.wait_ready()
        wait_mesh_states(nodes, {n.node_id: "alive" for n in nodes})
        for i in range(PADDING):
            assert a.post(f"/api/debug/tools?name=pad.tool_{i:02}&zone=public") == 200

        asyncio.run(_wait_searchable(c.url + "/mcp"))
        yield Pair(a, c)
    finally:
        for node in nodes:
            node.stop()


@pytest.mark.parametrize("mode", MODES)
async def test_a_short_list_a_search_and_calls_by_name_through_the_mesh(
    pair: Pair, mode: str
) -> None:
    async with sdk_client(pair.url, mode) as client:
        listed = [t.name for t in (await client.list_tools()).tools]
        assert len(listed) == MAX_LISTED
        assert listed[0] == "vsm.find_tools"
        assert "time.convert_time" not in listed

        found = await client.call_tool(
            "vsm.find_tools", {"query": "convert a time between time zones", "limit": 3}
        )
        assert not found.is_error
        assert found.structured_content is not None
        tools = found.structured_content["tools"]
        assert tools[0]["name"] == "time.convert_time"
        assert "target_timezone" in tools[0]["inputSchema"]["properties"]
        assert tools[0]["_meta"]["vsmcp/provider"] == "remote"  # A's, through the mesh
        assert found.structured_content["total"] > MAX_LISTED

        converted = await client.call_tool(
            "time.convert_time",
            {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"},
        )
        assert not converted.is_error
        assert converted.meta is not None and converted.meta["vsmcp/provider"] == pair.a.node_id
        assert "Europe/Paris" in converted.content[0].text  # type: ignore[union-attr]
        padded = await client.call_tool(f"pad.tool_{PADDING - 1:02}", {"x": 1})
        assert json.loads(padded.content[0].text) == {"x": 1}  # type: ignore[union-attr]
