"""WASM tools in a real mesh: node A, an edge node (`--profile edge`: WASM tools only),
serves WASM tools; node B (default profile) serves a Python plugin tool; an MCP client
(the official SDK) at B calls them through the mesh. The hostile modules are each stopped
at their limit on A, counted there, and the other tools keep answering. An edge node
with a Python plugin configured refuses to start, naming the key."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from tests.integration.harness import (
    REPO_ROOT,
    NodeProcess,
    counters,
    run_daemon,
    running,
)
from tests.integration.sdk_client import mcp_http_client
from tests.polling import async_wait_for
from tests.skips import require_module

pytestmark = pytest.mark.integration

MODULES = REPO_ROOT / "tests" / "edge" / "modules"
HOSTILE = {
    # module: (the limit it breaks, what the error says)
    "loop": ("time", "time limit of 300 ms"),
    "bomb": ("memory", "memory limit of 8 MB"),
    "flood": ("output", "limit of 65536 bytes"),
}
PLAIN_CONFIG = """
[mesh]
preset = "local"
[tools]
entry_points = false
"""


def _a_config(base: Path) -> str:
    lines = [PLAIN_CONFIG]
    lines.append(f'[[tools.wasm]]\nmanifest = "{REPO_ROOT / "examples" / "wasm" / "echo.toml"}"')
    for module in HOSTILE:
        manifest = base / f"{module}.toml"
        manifest.write_text(
            f'name = "hostile.{module}"\nmodule = "{MODULES / f"{module}.wat"}"\n'
            "[limits]\ntimeout_ms = 300\nmemory_mb = 8\noutput_bytes = 65536\n"
        )
        lines.append(f'[[tools.wasm]]\nmanifest = "{manifest}"')
    return "\n".join(lines) + "\n"


B_CONFIG = (
    PLAIN_CONFIG
    + '[[tools.plugins]]\nname = "add"\ntarget = "tests.integration.plugin_tools:add"\n'
)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    require_module("wasmtime")
    base = tmp_path_factory.mktemp("wasm-mesh")
    nodes = []
    for name, text, profile in (("a", _a_config(base), "edge"), ("b", B_CONFIG, "default")):
        config = base / f"{name}.toml"
        config.write_text(text)
        nodes.append(NodeProcess(base / name, "--config", str(config), "--profile", profile))
    with running(nodes) as (a, b):
        yield a, b


@asynccontextmanager
async def _client(node: NodeProcess) -> AsyncIterator[Client]:
    async with mcp_http_client() as http:
        transport = streamable_http_client(node.url + "/mcp", http_client=http)
        async with Client(transport, cache=None) as client:
            yield client


async def _wait_listed(client: Client, names: set[str]) -> None:
    async def listed() -> bool:
        tools = (await client.list_tools()).tools
        return names <= {t.name for t in tools}

    await async_wait_for(listed, timeout_s=30, what=f"{sorted(names)} listed at node B")


async def test_a_wasm_tool_on_a_is_called_by_an_mcp_client_at_b(
    nodes: tuple[NodeProcess, NodeProcess],
) -> None:
    a, b = nodes
    async with _client(b) as client:
        await _wait_listed(client, {"wasm.echo", "add"})
        tool = next(t for t in (await client.list_tools()).tools if t.name == "wasm.echo")
        assert "echo" in tool.description
        result = await client.call_tool("wasm.echo", {"from": "b"})
        assert not result.is_error
        assert result.structured_content == {"echo": {"from": "b"}}
    # B's registry has the tool from A, announced with its zone: B ran it through the mesh.
    registry = [t for t in b.get_json("/api/tools")["tools"] if t["name"] == "wasm.echo"]
    assert [(t["provider"], t["zone"]) for t in registry] == [(a.node_id, "public")]


async def test_hostile_modules_are_stopped_at_their_limits_and_others_keep_answering(
    nodes: tuple[NodeProcess, NodeProcess],
) -> None:
    a, b = nodes
    names = {f"hostile.{m}" for m in HOSTILE}
    async with _client(b) as client:
        await _wait_listed(client, names | {"wasm.echo", "add"})
        for module, (_, message) in HOSTILE.items():
            result = await client.call_tool(f"hostile.{module}", {})
            assert result.is_error
            text = result.content[0].text  # type: ignore[union-attr]
            assert message in text, text
            echoed = await client.call_tool("wasm.echo", {"after": module})
            assert echoed.structured_content == {"echo": {"after": module}}
            added = await client.call_tool("add", {"a": 2, "b": 3})
            assert not added.is_error
    # At least once each (a good call overrunning on a loaded machine would add a "time").
    stops = counters(a, "vsmcp_wasm_stops")
    assert all(stops.get(limit, 0) >= 1 for limit, _ in HOSTILE.values()), stops
    # Each tool's first call is tried on A's event loop (answered, or past its budget and
    # run again in a worker): the loop-hostile one among them, at least, overran it.
    inline = counters(a, "vsmcp_wasm_inline_calls")
    assert inline.get("overran", 0) >= 1, inline
    assert sum(inline.values()) >= len(HOSTILE) + 1, inline


def test_an_edge_node_with_a_python_plugin_refuses_to_start_naming_the_key(
    tmp_path: Path,
) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(B_CONFIG)
    done = run_daemon(
        "--config", str(config), "--profile", "edge", "--dev", "--data-dir", str(tmp_path / "d")
    )
    assert done.returncode == 2, done.stderr
    assert "tools.plugins" in done.stderr and "edge profile" in done.stderr
