"""A tiny stdio MCP server for the mount tests: `whoami` returns its request's `_meta`."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context, MCPServer

app = MCPServer("meta-echo")


@app.tool()
async def whoami(ctx: Context) -> dict[str, Any]:
    """The `_meta` this request carried."""
    meta = ctx.request_context.meta
    return {"meta": dict(meta) if meta else {}}


if __name__ == "__main__":
    app.run()
