"""A tiny MCP server (official SDK) for the mount tests: `whoami` returns its request's
`_meta` and, over HTTP, the headers it came with.

stdio by default; `--http` serves Streamable HTTP on 127.0.0.1 (port 0 unless `--port`)
and prints `listening on <url>` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer

app = MCPServer("meta-echo")


@app.tool()
async def whoami(ctx: Context) -> dict[str, Any]:
    """The `_meta` this request carried (and its HTTP headers, over HTTP)."""
    meta = ctx.request_context.meta
    request = getattr(ctx.request_context, "request", None)
    headers = dict(request.headers) if request is not None else {}
    return {"meta": dict(meta) if meta else {}, "headers": headers}


async def serve_http(port: int) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    # Listening before uvicorn serves: a client that connects early waits in the backlog.
    sock.listen(128)
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(app.streamable_http_app(), log_level="warning", lifespan="on")
    )
    await server.serve(sockets=[sock])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.http:
        asyncio.run(serve_http(args.port))
    else:
        app.run()
