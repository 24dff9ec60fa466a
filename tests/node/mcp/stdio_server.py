"""A vsmcp stdio MCP server for the tests: built-ins plus the sample plugins."""

from __future__ import annotations

import asyncio

from vsmcp.node.mcp.stdio import serve_stdio, stdio_streams
from vsmcp.node.tools.config import PluginToolConfig, ToolsConfig
from vsmcp.node.tools.registry import build_local_catalog


async def main() -> None:
    cfg = ToolsConfig(
        entry_points=False,
        plugins=[
            PluginToolConfig(name="slow", target="tests.node.tools.sample_plugins:slow"),
            PluginToolConfig(
                name="ops.restart", target="tests.node.tools.sample_plugins:add", zone="ops"
            ),
        ],
    )
    async with build_local_catalog(cfg) as catalog:
        await catalog.supervisor.wait_running()
        reader, writer = await stdio_streams()
        await serve_stdio(catalog, reader, writer, zone="public")


if __name__ == "__main__":
    asyncio.run(main())
