"""`vsmcp mcp-stdio`: the official SDK's stdio client reaches a running node's tools."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mcp import StdioServerParameters
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

from tests.integration.harness import REPO_ROOT, NodeProcess

pytestmark = pytest.mark.integration


async def test_stdio_bridge_lists_and_calls_the_nodes_tools(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    node = NodeProcess(tmp_path / "n", "--no-mdns")
    nodes.append(node)
    node.start()
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "node.cli", "mcp-stdio", "--url", node.url],
        cwd=str(REPO_ROOT),
    )
    for mode in ("auto", "legacy"):
        async with Client(params, mode=mode) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"echo", "vsm.status", "vsm.peers", "vsm.tools"} <= names
            result = await client.call_tool("echo", {"text": f"through stdio ({mode})"})
            assert result.content[0].text == f"through stdio ({mode})"  # type: ignore[union-attr]
            with pytest.raises(MCPError) as err:
                await client.call_tool("no.such.tool", {})
            assert err.value.code == -32602
            assert "no.such.tool" in err.value.message


def test_stdio_bridge_without_a_node_fails_clearly(tmp_path: Path) -> None:
    from tests.integration.harness import run_cli

    result = run_cli("mcp-stdio", "--data-dir", str(tmp_path / "nothing"))
    assert result.returncode == 2
    assert "no running node found" in result.stderr
