"""Regulation at the entry node of a real two-node mesh (in-process nodes): the adaptive
limit refuses what does not fit at once, a critical call passes it, the class crosses
the mesh to the provider, and the algedonic tool is never refused for load."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.node.routing.test_catalog import MODERN, SLOW_SCHEMA, Pair, _config, _has_tools, _post
from tests.node.tools import sample_plugins
from tests.polling import async_wait_for, async_wait_until
from vsmcp.node.app.node import Node
from vsmcp.node.mcp.protocol import OVERLOADED

ONE_AT_A_TIME = {"min_limit": 1, "initial_limit": 1, "max_limit": 1}


@pytest.fixture
async def regulated(tmp_path: Path) -> AsyncIterator[Pair]:
    plugins = [
        {
            "name": "slow",
            "target": "tests.node.tools.sample_plugins:slow",
            "input_schema": SLOW_SCHEMA,
        },
        {"name": "priority", "target": "tests.node.tools.sample_plugins:priority"},
    ]
    provider_cfg = _config(tmp_path / "a", **{"tools.plugins": plugins})
    async with Node(provider_cfg) as provider:
        seed = f"{provider.identity.node_id}@127.0.0.1:{provider.mesh_port}"
        entry_cfg = _config(
            tmp_path / "b",
            **{
                "mesh.seeds": [seed],
                "mcp.loopback_zone": "restricted",
                "mcp.loopback_max_priority": "critical",
                "vsm.concurrency": ONE_AT_A_TIME,
            },
        )
        async with Node(entry_cfg) as entry:
            result = Pair(provider, entry)
            await async_wait_for(
                lambda: _has_tools(result, {"slow", "priority"}),
                timeout_s=20,
                what="provider tools listed at the entry node",
            )
            yield result


async def _call(
    pair: Pair, name: str, arguments: dict[str, Any], priority: str
) -> tuple[int, dict[str, Any]]:
    params = {"name": name, "arguments": arguments, "_meta": {**MODERN, "vsmcp/priority": priority}}
    return await _post(
        pair.url, {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    )


async def test_a_full_entry_refuses_at_once_but_critical_calls_pass_and_keep_their_class(
    regulated: Pair,
) -> None:
    started = len(sample_plugins.STARTED)
    holder = asyncio.create_task(_call(regulated, "slow", {"steps": 0, "hold_s": 30}, "normal"))
    try:
        await async_wait_until(
            lambda: len(sample_plugins.STARTED) > started, what="slow started on the provider"
        )
        status, body = await _call(regulated, "priority", {}, "high")
        assert not holder.done()  # refused while the entry's one slot is taken
        assert (status, body["error"]["code"]) == (503, OVERLOADED)
        assert body["error"]["data"]["limit"] == "adaptive_concurrency"
        # A critical call passes the full entry, and reaches the provider as critical.
        status, body = await _call(regulated, "priority", {}, "critical")
        assert status == 200 and body["result"]["structuredContent"] == {"priority": "critical"}
        # The algedonic tool is critical whatever its caller named.
        signal = {"valence": "pain", "intensity": 0.1, "reason": "test"}
        status, body = await _call(regulated, "vsm.signal", signal, "low")
        assert status == 200 and body["result"]["structuredContent"]["accepted"] is True
        limiter = regulated.entry.vsm.entry_gate.limiter  # type: ignore[union-attr]
        assert limiter.refused == {"low": 0, "normal": 0, "high": 1, "critical": 0}
        assert limiter.admitted["critical"] == 2
    finally:
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
