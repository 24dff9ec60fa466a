"""A `vsmcpd` that mounts an MCP server by URL (Streamable HTTP): configured in TOML,
called through the daemon's own /mcp. The server is a real official-SDK server on
loopback, in its own process."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp.client.client import Client

from tests.integration.harness import NodeProcess
from tests.node.tools.test_mounted_http import HEADER, start_server
from tests.polling import async_wait_for

pytestmark = pytest.mark.integration


async def test_a_url_mount_in_the_config_is_served_at_the_daemons_mcp(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    server = await start_server()
    try:
        config = tmp_path / "node.toml"
        config.write_text(
            f"""
[tools]
entry_points = false
[[tools.mounts]]
name = "web"
url = "{server.url}"
headers = {{ "{HEADER}" = "from-toml" }}
"""
        )
        node = NodeProcess(tmp_path / "n", "--config", str(config), "--no-mdns")
        nodes.append(node)
        node.start()
        async with Client(node.url + "/mcp", mode="auto", cache=None) as client:

            async def listed() -> bool:
                return "web.whoami" in [t.name for t in (await client.list_tools()).tools]

            await async_wait_for(listed, timeout_s=30, what="web.whoami listed")
            result = await client.call_tool("web.whoami", {})
        assert not result.is_error, result
        seen = result.structured_content
        assert seen is not None
        assert seen["headers"][HEADER] == "from-toml"
        assert seen["meta"]["vsmcp/origin"].startswith("http")
    finally:
        await server.kill()
