"""`vsmcp mcp-stdio`: the official SDK's stdio client reaches a running node's tools."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mcp import StdioServerParameters
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

from tests.integration.harness import REPO_ROOT, NodeProcess
from tests.integration.test_client_requests import _sampling
from tests.polling import async_wait_for

pytestmark = pytest.mark.integration


async def test_stdio_bridge_lists_and_calls_the_nodes_tools(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    node = NodeProcess(tmp_path / "n", "--no-mdns")
    nodes.append(node)
    node.start()
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "vsmcp.node.app.cli", "mcp-stdio", "--url", node.url],
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


def _node_with_ops_tool(tmp_path: Path, name: str, stdio_zone: str) -> NodeProcess:
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'[mcp]\nstdio_zone = "{stdio_zone}"\nloopback_zone = "public"\n'
        '[[tools.plugins]]\nname = "add"\ntarget = "tests.integration.plugin_tools:add"\n'
        'zone = "ops"\n'
    )
    return NodeProcess(tmp_path / name, "--no-mdns", "--config", str(config))


async def _call_add(*bridge_args: str) -> int | tuple[int, object]:
    """The sum through a `vsmcp mcp-stdio` bridge, or (error code, the caller zone the node saw)."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "vsmcp.node.app.cli", "mcp-stdio", *bridge_args],
        cwd=str(REPO_ROOT),
    )
    async with Client(params, mode="auto") as client:
        try:
            result = await client.call_tool("add", {"a": 2, "b": 3})
        except MCPError as e:
            data = e.data if isinstance(e.data, dict) else {}
            return e.code, data.get("zone")
    assert result.structured_content is not None, result
    return int(result.structured_content["sum"])


async def test_stdio_clients_get_the_nodes_stdio_zone(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    public = _node_with_ops_tool(tmp_path, "public", stdio_zone="public")
    ops = _node_with_ops_tool(tmp_path, "ops", stdio_zone="ops")
    nodes += [public, ops]
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_ready()

    # mcp.stdio_zone = public: a stdio client may not call an ops tool.
    assert await _call_add("--data-dir", str(public.data_dir)) == (-32010, "public")
    # mcp.stdio_zone = ops: it may (the zone the node decided, not the bridge).
    assert await _call_add("--data-dir", str(ops.data_dir)) == 5
    # A bridge that cannot show the node's stdio secret (--url alone: any local process
    # could do that) is a plain loopback client, whatever it calls itself.
    assert await _call_add("--url", ops.url) == (-32010, "public")


async def test_stdio_bridge_passes_logs_and_sampling_to_its_client(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """A tool's log line and sampling request reach the stdio client through the bridge
    (and the node's /mcp), and the client's answer reaches the tool."""
    import mcp_types as types

    config = tmp_path / "asking.toml"
    config.write_text(
        '[[tools.plugins]]\nname = "plugin.ask"\ntarget = "tests.integration.asking_plugin:ask"\n'
    )
    node = NodeProcess(tmp_path / "n", "--no-mdns", "--config", str(config))
    nodes.append(node)
    node.start()
    logs: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "vsmcp.node.app.cli", "mcp-stdio", "--url", node.url],
        cwd=str(REPO_ROOT),
    )
    async with Client(
        params, mode="legacy", sampling_callback=_sampling, logging_callback=on_log
    ) as client:
        await client.set_logging_level("info")
        result = await client.call_tool("plugin.ask", {"question": "via stdio?"})
        assert not result.is_error, result
        assert result.content[0].text == "plugin heard: echo of via stdio?"  # type: ignore[union-attr]

        async def logged() -> bool:
            return any(p.data == "plugin asks" for p in logs)

        await async_wait_for(logged, timeout_s=20, what="the plugin's log line at the client")
