"""Routing of a `scale` tool (node/children/scale.py): a call that finds the local unit
full goes to another provider of the same tool (two real in-process nodes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.node.routing.test_catalog import SLOW_SCHEMA, Pair, _call, _has_tools, seeded_pair
from tests.polling import async_wait_for
from vsmcp.node.app.node import Node

CALLS = 6
# A `scale` whose CPU threshold is never reached: spill routing without any spawn.
NEVER_SPAWN = {"children": "auto", "max": 1, "cpu": 64.0}


def slow_plugin(scale: dict[str, Any] | None) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {
        "name": "slow",
        "target": "tests.node.tools.sample_plugins:slow",
        "input_schema": SLOW_SCHEMA,
        "limits": {"max_concurrency": 1, "max_queue": 64},
    }
    if scale is not None:
        entry["scale"] = scale
    return [entry]


async def started_pair(tmp_path: Path, scale: dict[str, Any] | None) -> AsyncIterator[Pair]:
    provider_cfg = {"tools.plugins": slow_plugin(None)}
    entry_cfg = {"mcp.loopback_zone": "restricted", "tools.plugins": slow_plugin(scale)}
    async with seeded_pair(tmp_path, provider_cfg, entry_cfg) as pair:
        # Both offer it: wait until the entry node routes to the provider's too.

        async def ready() -> bool:
            return await _has_tools(pair, {"slow"}) and remote_known(pair.entry)

        await async_wait_for(ready, timeout_s=20, what="the provider's slow routable")
        yield pair


def remote_known(entry: Node) -> bool:
    """The entry's catalog routes to the provider's `slow` (its index lags the registry)."""
    return bool(entry._tools._usable_remote("slow"))  # type: ignore[union-attr]


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
