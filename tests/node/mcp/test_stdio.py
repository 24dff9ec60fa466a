"""serve_stdio: the SDK's stdio client (auto and legacy) against a subprocess, and in-process."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import pytest
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from vsmcp.node.mcp.protocol import INVALID_PARAMS, PARSE_ERROR, ZONE_DENIED
from vsmcp.node.mcp.stdio import serve_stdio
from vsmcp.node.tools.config import ToolsConfig
from vsmcp.node.tools.registry import build_local_catalog

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_sdk_stdio_client(mode: str) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "tests.node.mcp.stdio_server"],
        cwd=str(ROOT),
        env={"PYTHONPATH": str(ROOT)},
    )
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with Client(params, mode=mode, cache=None) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert names == ["echo", "slow"]
        result = await client.call_tool("echo", {"text": "over stdio"})
        assert result.content[0].text == "over stdio"  # type: ignore[union-attr]
        await client.call_tool("slow", {"steps": 2}, progress_callback=on_progress)
        assert seen == [1, 2]
        with pytest.raises(MCPError) as err:
            await client.call_tool("ops.restart", {"a": 1, "b": 1})
        assert err.value.code == ZONE_DENIED
        with pytest.raises(MCPError) as err:
            await client.call_tool("missing", {})
        assert err.value.code == INVALID_PARAMS


async def test_in_process_lines_and_cancellation() -> None:
    async with build_local_catalog(ToolsConfig(entry_points=False)) as catalog:
        await catalog.supervisor.wait_running()
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        client_in, client_out = await asyncio.open_connection(sock=theirs)
        server = asyncio.create_task(serve_stdio(catalog, reader, writer))
        call = {"name": "echo", "arguments": {"text": "x"}}
        client_out.write(b"{oops\n")
        client_out.write(b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}\n')
        client_out.write(
            json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}).encode()
            + b"\n"
        )
        replies = [json.loads(await client_in.readline()) for _ in range(3)]
        assert replies[0]["error"]["code"] == PARSE_ERROR
        assert replies[1]["result"]["protocolVersion"] == "2025-11-25"
        assert replies[2]["result"]["content"] == [{"type": "text", "text": "x"}]
        client_out.close()
        await asyncio.wait_for(server, 5)
        writer.close()
        await client_out.wait_closed()
