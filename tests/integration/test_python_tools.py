"""Python tools written as the MCP SDK writes them (`def add(a: int, b: int) -> int`),
served by a real `vsmcpd` through /mcp to the official SDK client in both revisions;
one whose signature contradicts its declared schema stops the node at start (exit 2,
naming the config key)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from tests.integration.harness import NodeProcess, run_daemon
from tests.integration.sdk_client import MODES, sdk_client
from vsmcp.node.mcp.protocol import INVALID_PARAMS

pytestmark = pytest.mark.integration

CONFIG = """
[mesh]
preset = "local"
[tools]
entry_points = false
[[tools.plugins]]
name = "add"
target = "tests.integration.plugin_tools:add_numbers"
[[tools.plugins]]
name = "greet"
target = "tests.integration.plugin_tools:greet"
[[tools.plugins]]
name = "dict_add"
target = "tests.integration.plugin_tools:add"
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("python-tools")
    (base / "vsmcp.toml").write_text(CONFIG)
    started = NodeProcess(base / "n", "--config", str(base / "vsmcp.toml"), "--no-mdns").start()
    yield started
    started.stop()


@pytest.mark.parametrize("mode", MODES)
async def test_a_keyword_function_is_a_tool_as_in_the_sdk(node: NodeProcess, mode: str) -> None:
    async with sdk_client(f"{node.url}/mcp", mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        add = tools["add"]
        assert add.input_schema["properties"] == {
            "a": {"title": "A", "type": "integer"},
            "b": {"title": "B", "type": "integer"},
        }
        assert add.input_schema["required"] == ["a", "b"]
        assert add.output_schema is not None
        assert add.output_schema["properties"]["result"] == {"title": "Result", "type": "integer"}
        assert add.description is not None and add.description.startswith("Add two integers.")
        added = await client.call_tool("add", {"a": 20, "b": 22})
        assert not added.is_error
        assert added.structured_content == {"result": 42}
        assert added.content[0].text == "42"  # type: ignore[union-attr]
        # The dict form with its declared schema answers as before, beside it.
        assert (await client.call_tool("dict_add", {"a": 1, "b": 2})).structured_content == {
            "sum": 3
        }
        with pytest.raises(MCPError) as refused:
            await client.call_tool("add", {"a": 1})
        assert refused.value.error.code == INVALID_PARAMS


@pytest.mark.parametrize("mode", MODES)
async def test_an_async_keyword_function_gets_context_and_progress(
    node: NodeProcess, mode: str
) -> None:
    progress: list[tuple[float, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, message))

    async with sdk_client(f"{node.url}/mcp", mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools["greet"].input_schema["properties"]) == {"name", "punctuation"}
        greeted = await client.call_tool("greet", {"name": "mesh"}, progress_callback=on_progress)
        assert greeted.structured_content is not None
        assert greeted.structured_content["greeting"] == "Hello, mesh!"
        assert len(greeted.structured_content["trace"]) == 32  # the call's own context
        assert json.loads(greeted.content[0].text)["greeting"] == "Hello, mesh!"  # type: ignore[union-attr]
    assert progress == [(1.0, "greeting")]


def test_a_signature_contradicting_its_schema_stops_the_node(tmp_path: Path) -> None:
    config = tmp_path / "vsmcp.toml"
    config.write_text(
        CONFIG
        + """
[[tools.plugins]]
name = "bad"
target = "tests.integration.plugin_tools:mismatched"
input_schema = { type = "object", properties = { a = {}, b = {} }, required = ["a", "b"] }
"""
    )
    result = run_daemon(
        "--dev", "--no-mdns", "--data-dir", str(tmp_path / "data"), "--http-port", "0",
        "--mesh-port", "0", "--config", str(config),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("vsmcpd: config key 'tools.plugins[3].target': "), line
    assert "parameter 'c' of bad(a, c) is not a property of its declared input schema" in line
