"""A stdio MCP server written by hand (no SDK), answering what real servers get wrong.

It speaks both revisions: `server/discover` (2026-07-28) and `initialize` (2025-11-25).
Tools: `echo` (a good answer), `malformed` (`content` is not a list: invalid in every
revision), `bad_structured` (structured content its own output schema refuses).
With `MALFORMED_HTTP_PORT`, it serves Streamable HTTP (JSON answers) on that loopback
port instead of stdio. With `MALFORMED_OMIT_RESULT_TYPE=1`, its `tools/call` results
carry no `resultType`, as the MCP conformance project's TypeScript reference server
answers while accepting 2026-07-28: valid for 2025-11-25, not for 2026-07-28; with
`=all`, its `tools/list` results too (found at the mount's start).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

MODERN = "2026-07-28"
TOOLS = [
    {
        "name": "echo",
        "description": "Echo `text` back.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
    {"name": "malformed", "description": "Answers junk.", "inputSchema": {"type": "object"}},
    {
        "name": "bad_structured",
        "description": "Answers structured content its output schema refuses.",
        "inputSchema": {"type": "object"},
        "outputSchema": {
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "required": ["n"],
        },
    },
]


def _complete(result: dict[str, Any]) -> dict[str, Any]:
    return {**result, "resultType": "complete"}


def _call(params: dict[str, Any]) -> dict[str, Any]:
    name = params.get("name")
    if name == "echo":
        text = str((params.get("arguments") or {}).get("text", ""))
        result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": False}
    elif name == "malformed":
        result = {"content": "this is not a list of content blocks", "isError": False}
    elif name == "bad_structured":
        result = {
            "content": [{"type": "text", "text": '{"n": "not a number"}'}],
            "structuredContent": {"n": "not a number"},
            "isError": False,
        }
    else:
        return {"error": {"code": -32602, "message": f"unknown tool {name!r}"}}
    if os.environ.get("MALFORMED_OMIT_RESULT_TYPE") in ("1", "all"):
        return {"result": result}
    return {"result": _complete(result)}


def _answer(method: str, params: dict[str, Any]) -> dict[str, Any]:
    if method == "server/discover":
        return {
            "result": _complete(
                {
                    "supportedVersions": [MODERN],
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "malformed", "version": "1"},
                    "ttlMs": 0,
                    "cacheScope": "private",
                }
            )
        }
    if method == "initialize":
        return {
            "result": {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "malformed", "version": "1"},
            }
        }
    if method == "tools/list":
        listing = {"tools": TOOLS}
        if os.environ.get("MALFORMED_OMIT_RESULT_TYPE") == "all":
            return {"result": listing}
        return {"result": _complete({**listing, "ttlMs": 0, "cacheScope": "private"})}
    if method == "tools/call":
        return _call(params)
    if method == "ping":
        return {"result": {}}
    return {"error": {"code": -32601, "message": f"Method not found: {method}"}}


def _reply(message: Any) -> dict[str, Any] | None:
    """The JSON-RPC answer to one message; None for notifications and answers."""
    if not isinstance(message, dict) or "id" not in message or "method" not in message:
        return None
    answer = _answer(str(message["method"]), message.get("params") or {})
    return {"jsonrpc": "2.0", "id": message["id"], **answer}


def serve_http(port: int) -> None:
    from aiohttp import web

    async def post(request: web.Request) -> web.Response:
        reply = _reply(await request.json())
        if reply is None:
            return web.Response(status=202)
        return web.json_response(reply)

    async def no_stream(request: web.Request) -> web.Response:
        return web.Response(status=405)  # no server-initiated stream: allowed

    app = web.Application()
    app.router.add_post("/mcp", post)
    app.router.add_get("/mcp", no_stream)
    app.router.add_delete("/mcp", no_stream)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def main() -> None:
    port = os.environ.get("MALFORMED_HTTP_PORT")
    if port:
        serve_http(int(port))
        return
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        reply = _reply(message)
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
