"""Failover rules on real `vsmcpd` processes: a provider that dies after it started a
call is not replaced by another one (the tool may have run; calls are not assumed
idempotent)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

from tests.integration.harness import NodeProcess, start_configured, wait_mesh_states
from tests.polling import async_wait_until

pytestmark = pytest.mark.integration

PROVIDER_CONFIG = """
[mesh]
preset = "local"
[tools]
entry_points = false
[[tools.plugins]]
name = "hold"
target = "tests.integration.plugin_tools:hold"
"""
# The entry node's call timeout outlasts the membership verdict on a killed provider,
# so the call ends because the provider is gone, not because time ran out.
ENTRY_CONFIG = """
[mesh]
preset = "local"
[tools]
entry_points = false
timeout_s = 120
"""
CALL_TIMEOUT_S = 90.0


def _providers(node: NodeProcess, tool: str) -> set[str]:
    return {t["provider"] for t in node.get_json("/api/tools")["tools"] if t["name"] == tool}


async def test_a_provider_that_dies_after_starting_the_call_is_not_replaced(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a = start_configured(tmp_path, nodes, PROVIDER_CONFIG, "a")
    b = start_configured(tmp_path, nodes, PROVIDER_CONFIG, "b")
    entry = start_configured(tmp_path, nodes, ENTRY_CONFIG, "entry")
    for node in (a, b, entry):
        node.wait_ready()
    group = [a, b, entry]
    wait_mesh_states(group, {n.node_id: "alive" for n in group})
    await async_wait_until(
        lambda: _providers(entry, "hold") == {a.node_id, b.node_id},
        timeout_s=30,
        what="hold offered by both providers at the entry node",
    )
    markers = tmp_path / "markers"
    markers.mkdir()
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        # Progress reached us through the entry node: it knows the provider started.
        started.set()

    outcome: list[BaseException | object] = []

    async def call(client: Client) -> None:
        try:
            outcome.append(
                await client.call_tool(
                    "hold", {"marker_dir": str(markers)}, progress_callback=on_progress
                )
            )
        except MCPError as e:
            outcome.append(e)

    async with Client(entry.url + "/mcp", mode="auto", cache=None) as client:
        with anyio.fail_after(CALL_TIMEOUT_S):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(call, client)
                await started.wait()
                (marker,) = list(markers.iterdir())
                victim = {str(a.pid): a, str(b.pid): b}[marker.name]
                victim.kill()
                victim.wait_exit()
    survivor = b if victim is a else a
    (error,) = outcome
    assert isinstance(error, MCPError), error
    assert "not retried" in error.message, error.message
    assert victim.node_id in error.message
    # The other provider never started it.
    assert [m.name for m in markers.iterdir()] == [str(victim.pid)]
    assert survivor.proc is not None and survivor.proc.poll() is None


# The entry node offers `hold` itself, one call at a time and no queue: a second call
# is refused by the local unit before it runs (overloaded).
ENTRY_WITH_LOCAL_HOLD = (
    ENTRY_CONFIG
    + """
[[tools.plugins]]
name = "hold"
target = "tests.integration.plugin_tools:hold"
limits = { max_concurrency = 1, max_queue = 0 }
"""
)


async def test_a_call_the_local_unit_refuses_before_running_goes_to_a_mesh_provider(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    provider = start_configured(tmp_path, nodes, PROVIDER_CONFIG, "provider")
    entry = start_configured(tmp_path, nodes, ENTRY_WITH_LOCAL_HOLD, "entry")
    for node in (provider, entry):
        node.wait_ready()
    wait_mesh_states([provider, entry], {n.node_id: "alive" for n in (provider, entry)})
    await async_wait_until(
        lambda: _providers(entry, "hold") == {provider.node_id, entry.node_id},
        timeout_s=30,
        what="hold offered by both nodes at the entry node",
    )
    markers = tmp_path / "markers"
    markers.mkdir()
    url = entry.url + "/mcp"
    async with (
        Client(url, mode="auto", cache=None) as first,
        Client(url, mode="auto", cache=None) as second,
    ):
        with anyio.fail_after(CALL_TIMEOUT_S):
            async with anyio.create_task_group() as tasks:
                # The first call takes the entry node's only local slot and keeps it.
                tasks.start_soon(first.call_tool, "hold", {"marker_dir": str(markers)})
                await async_wait_until(
                    lambda: (markers / str(entry.pid)).exists(), what="first call running here"
                )
                result = await second.call_tool("hold", {"marker_dir": str(markers), "hold_s": 0})
                tasks.cancel_scope.cancel()
    assert not result.is_error, result
    assert result.content[0].text == "held"  # type: ignore[union-attr]
    assert result.meta is not None and result.meta["vsmcp/provider"] == provider.node_id
    assert (markers / str(provider.pid)).exists()
