"""Routing of a `scale` tool (node/children/scale.py): a call that finds the local unit
full goes to another provider of the same tool (two real in-process nodes)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.node.routing.test_catalog import (
    SLOW_SCHEMA,
    Pair,
    _audit_rows,
    _call,
    _config,
    _has_tools,
    seeded_pair,
)
from tests.polling import async_wait_for, async_wait_until
from vsmcp.node.app.node import Node
from vsmcp.node.routing.wire import MAX_ATTEMPTS

CALLS = 6
# A `scale` whose CPU threshold is never reached: spill routing without any spawn.
NEVER_SPAWN = {"children": "auto", "max": 1, "cpu": 64.0}


def slow_plugin(
    scale: dict[str, Any] | None,
    schema: dict[str, Any] = SLOW_SCHEMA,
    max_queue: int = 64,
) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {
        "name": "slow",
        "target": "tests.node.tools.sample_plugins:slow",
        "input_schema": schema,
        "limits": {"max_concurrency": 1, "max_queue": max_queue},
    }
    if scale is not None:
        entry["scale"] = scale
    return [entry]


async def started_pair(
    tmp_path: Path, scale: dict[str, Any] | None, provider_schema: dict[str, Any] = SLOW_SCHEMA
) -> AsyncIterator[Pair]:
    provider_cfg = {"tools.plugins": slow_plugin(None, provider_schema)}
    entry_cfg = {"mcp.loopback_zone": "restricted", "tools.plugins": slow_plugin(scale)}
    async with seeded_pair(tmp_path, provider_cfg, entry_cfg) as pair:
        # Both offer it: wait until the entry node routes to the provider's too.

        async def ready() -> bool:
            # Two schemas are listed as two variants (`slow.<digest>`), not as `slow`.
            listed = provider_schema is not SLOW_SCHEMA or await _has_tools(pair, {"slow"})
            return listed and remote_known(pair.entry)

        await async_wait_for(ready, timeout_s=20, what="the provider's slow routable")
        yield pair


def remote_known(entry: Node, providers: int = 1) -> bool:
    """The entry's catalog routes to the providers' `slow` (its index lags the registry)."""
    return len(entry._tools._usable_remote("slow")) >= providers  # type: ignore[union-attr]


def served(node: Node) -> int:
    unit = node._tools.local.supervisor.units["plugin:slow"]  # type: ignore[union-attr]
    return unit.kpis.total


@pytest.fixture
async def scaled(tmp_path: Path) -> AsyncIterator[Pair]:
    async for pair in started_pair(tmp_path, NEVER_SPAWN):
        yield pair


@pytest.fixture
async def plain(tmp_path: Path) -> AsyncIterator[Pair]:
    async for pair in started_pair(tmp_path, None):
        yield pair


async def _burst(pair: Pair) -> None:
    results = await asyncio.gather(
        *(_call(pair.url, "slow", {"steps": 0, "hold_s": 0.3}) for _ in range(CALLS))
    )
    assert all(status == 200 and "result" in body for status, body in results), results


async def test_a_scale_tool_spills_to_another_provider_while_its_unit_is_full(
    scaled: Pair,
) -> None:
    await _burst(scaled)
    assert served(scaled.provider) >= 1 and served(scaled.entry) >= 1
    assert served(scaled.provider) + served(scaled.entry) == CALLS
    assert scaled.entry._tools.stats.get("spill", 0) >= 1  # type: ignore[union-attr]


async def test_a_tool_without_scale_queues_locally(plain: Pair) -> None:
    await _burst(plain)
    assert (served(plain.entry), served(plain.provider)) == (CALLS, 0)


# The provider's `slow` takes one more argument: another input schema (another variant).
FOREIGN_SCHEMA = {
    "type": "object",
    "properties": {**SLOW_SCHEMA["properties"], "colour": {"type": "string"}},  # type: ignore[dict-item]
}


@pytest.fixture
async def foreign(tmp_path: Path) -> AsyncIterator[Pair]:
    async for pair in started_pair(tmp_path, NEVER_SPAWN, FOREIGN_SCHEMA):
        yield pair


async def test_a_full_unit_does_not_spill_to_a_provider_of_another_schema(foreign: Pair) -> None:
    await _burst(foreign)
    assert (served(foreign.entry), served(foreign.provider)) == (CALLS, 0)


FULL_PROVIDERS = 3


@contextlib.asynccontextmanager
async def entry_with_full_providers(tmp_path: Path) -> AsyncIterator[list[Node]]:
    """An entry node with a `scale` tool and FULL_PROVIDERS providers of the same `slow`
    that refuse at once when busy (no queue); the entry node last."""
    async with contextlib.AsyncExitStack() as stack:
        nodes: list[Node] = []
        for i in range(FULL_PROVIDERS):
            cfg = _config(tmp_path / f"p{i}", **{"tools.plugins": slow_plugin(None, max_queue=0)})
            nodes.append(await stack.enter_async_context(Node(cfg)))
        seeds = [f"{n.identity.node_id}@127.0.0.1:{n.mesh_port}" for n in nodes]
        entry_cfg = _config(
            tmp_path / "entry",
            **{"mesh.seeds": seeds, "tools.plugins": slow_plugin(NEVER_SPAWN)},
        )
        entry = await stack.enter_async_context(Node(entry_cfg))
        await async_wait_until(
            lambda: remote_known(entry, FULL_PROVIDERS),
            timeout_s=30,
            what="every provider's slow routable",
        )
        yield [*nodes, entry]


async def test_a_spilled_call_tries_at_most_max_attempts_nodes(tmp_path: Path) -> None:
    async with entry_with_full_providers(tmp_path) as nodes:
        entry = nodes[-1]
        url = f"http://127.0.0.1:{entry.http_port}/mcp"
        results = await asyncio.gather(
            *(_call(url, "slow", {"steps": 0, "hold_s": 0.5}) for _ in range(2 * CALLS))
        )
        assert all(status == 200 and "result" in body for status, body in results), results
        await entry.audit.flush()
        rows = [r for r in await _audit_rows(entry, "tool.call") if r["tool"] == "slow"]
        assert len(rows) == 2 * CALLS
        assert max(r["attempts"] for r in rows) <= MAX_ATTEMPTS, rows
