"""Gray-failure recovery probes across a real two-node mesh (in-process nodes): a
provider's `vsm.probe` refused for load is a skipped probe, not a failed one."""

from __future__ import annotations

from pathlib import Path

from tests.node.routing.test_catalog import SLOW_SCHEMA, Pair, _config, _has_tools
from tests.polling import async_wait_for
from vsmcp.node.app.node import Node


async def test_a_probe_the_provider_rate_limits_is_skipped_not_failed(tmp_path: Path) -> None:
    plugins = [
        {
            "name": "slow",
            "target": "tests.node.tools.sample_plugins:slow",
            "input_schema": SLOW_SCHEMA,
        }
    ]
    provider_cfg = _config(
        tmp_path / "a",
        **{"tools.plugins": plugins, "vsm.audits": {"max_probes_per_minute": 1}},
    )
    async with Node(provider_cfg) as provider:
        seed = f"{provider.identity.node_id}@127.0.0.1:{provider.mesh_port}"
        async with Node(_config(tmp_path / "b", **{"mesh.seeds": [seed]})) as entry:
            pair = Pair(provider, entry)
            await async_wait_for(
                lambda: _has_tools(pair, {"slow"}), timeout_s=20, what="slow at the entry"
            )
            tools = entry._tools
            assert tools is not None
            provider_id = provider.identity.node_id
            # `slow` declares no probe; the provider answers one probe a minute.
            assert await tools._ask_probe(provider_id, "slow") == "no_probe"
            assert await tools._ask_probe(provider_id, "slow") == "skipped"
            assert provider.audits.stats["probe_refused"] == 1
