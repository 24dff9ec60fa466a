"""The regulating systems in a real node: a pattern's algedonic action reaches System 5,
whose default rule tightens the node's limits; the calls and the signal move S3's KPIs,
the balance and the viability; metrics carry the scores."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from tests.polling import async_wait_for
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.app.config import load_config
from vsmcp.node.app.node import Node
from vsmcp.node.app.vsm_systems import VsmSystems
from vsmcp.node.children.errors import SpawnRefused
from vsmcp.node.vsm.events import ToolCallFinished
from vsmcp.node.vsm.stream import EventStream

MODERN = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}

REPORTER_TOKEN = "reporter-token-0123456789abcdef"

PATTERN = """
[[patterns]]
name = "echo-hurts"
kind = "tool_call"
where = {field = "tool", op = "eq", value = "echo"}
actions = [{type = "algedonic", valence = "pain", intensity = 0.9, reason = "echo called"}]
"""


def _node_config(tmp_path: Path, **overrides: Any) -> Any:
    """A dev node on loopback ports, without mDNS or entry points, plus `overrides`."""
    return load_config(
        overrides={
            "node.data_dir": str(tmp_path / "data"),
            "node.dev": True,
            "http.port": 0,
            "mesh.port": 0,
            "mesh.preset": "local",
            "mesh.mdns": False,
            "tools.entry_points": False,
            **overrides,
        },
        environ={},
    )


def _config(tmp_path: Path) -> Any:
    patterns = tmp_path / "patterns"
    patterns.mkdir()
    (patterns / "p.toml").write_text(PATTERN)
    return _node_config(
        tmp_path,
        **{
            "limits.per_origin": {"rate_per_s": 100, "burst": 100},
            "vsm.patterns_dir": str(patterns),
        },
    )


async def _echo(port: int | None) -> dict[str, Any]:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hi"}, "_meta": MODERN},
    }
    headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "echo"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/mcp", json=body, headers=headers) as r,
    ):
        result: dict[str, Any] = await r.json()
        return result


async def test_a_pattern_signal_reaches_s5_and_its_default_rule_tightens_limits(
    tmp_path: Path,
) -> None:
    async with Node(_config(tmp_path)) as node:
        before = node.vsm_view()
        assert before["viability"]["node"] == 1.0
        assert before["s2"]["concurrency"]["builtin"] == {"max": 16, "effective": 16}
        assert "result" in await _echo(node.http_port)

        async def tightened() -> bool:
            return bool(node.vsm_view()["s5"]["active"])

        await async_wait_for(tightened, timeout_s=10, what="S5's default response")
        view = node.vsm_view()
        (active,) = view["s5"]["active"]
        assert active["rule"] == "pain-tighten" and active["action"] == "tighten_limit"
        assert view["s5"]["recent_signals"][0]["source"] == "pattern:echo-hurts"
        assert view["s2"]["limits_scale"] == 0.5
        assert view["s2"]["concurrency"]["builtin"]["effective"] == 8
        limiter = node.vsm.effectors.catalog.policy.limiter  # type: ignore[union-attr]
        assert limiter is not None and limiter.per_origin.scale == 0.5
        # The call is in S3's KPIs; the pain in the balance lowers the viability.
        assert view["s3"]["kpis"]["calls"] == 1
        assert view["viability"]["inputs"]["balance"] < 0
        assert view["viability"]["node"] < 1.0
        status = node.vsm_status()
        assert status["node_id"] == node.identity.node_id and "viability" in status
        metrics = node.render_metrics().decode()
        assert 'vsmcp_viability{scope="node"}' in metrics
        assert 'vsmcp_viability_factor{factor="algedonic"} 0.55' in metrics


async def test_a_block_origin_rule_issues_an_immune_block_that_the_node_enforces(
    tmp_path: Path,
) -> None:
    config = _node_config(
        tmp_path,
        **{
            "vsm.responses": [{"name": "block-the-source", "do": "block_origin"}],
            "mcp.tokens": [{"name": "reporter", "token": REPORTER_TOKEN, "zone": "restricted"}],
        },
    )
    async with Node(config) as node:
        assert node.vsm.s5.mitigator is node.immune
        # The rule has no target: it blocks the signal's source, which is always the
        # caller's own origin (a named source goes after it), never one it picks.
        signal = {"valence": "pain", "intensity": 0.95, "reason": "abuse"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{node.http_port}/api/algedonic",
                json=signal,
                headers={"Authorization": f"Bearer {REPORTER_TOKEN}"},
            ) as r,
        ):
            assert r.status == 202, await r.text()

        def blocks() -> list[dict[str, Any]]:
            return [
                p
                for p in node.policies_view()["policies"]
                if p["kind"] == "mitigation" and p["target"] == "http:reporter"
            ]

        async def issued() -> bool:
            return bool(blocks()) and node.vsm_view()["s5"]["outcomes"].get("issued", 0) == 1

        await async_wait_for(
            issued, timeout_s=10, what="the S5 rule's block through the immune system"
        )
        (block,) = blocks()
        assert block["target_kind"] == "origin"
        assert "block-the-source" in str(block["note"])
        # Loopback HTTP callers are not the blocked origin: they keep working.
        assert "result" in await _echo(node.http_port)


async def test_system_3_s_lowered_bound_lowers_the_recursion_limits(tmp_path: Path) -> None:
    config = _node_config(
        tmp_path, **{"vsm.concurrency": {"max_limit": 64}, "recursion.max_children": 1}
    )
    async with Node(config) as node:
        assert node.vsm.capacity_factor() == 1.0
        governor = node.vsm.overload.governor
        assert governor is not None
        while governor.share == 1.0:  # the event loop lagging under admitted calls
            governor.tick(10.0, busy=True)
        assert node.vsm.capacity_factor() == governor.share < 1.0
        manager = node.children.manager
        assert manager is not None
        with pytest.raises(SpawnRefused, match=r"System 3's limits at 75%"):
            manager.spawn("one", caller="test")


def test_sustained_refusals_without_vsm_concurrency_are_pain_and_lower_viability(
    tmp_path: Path,
) -> None:
    # No [vsm.concurrency]: a unit's full queue, System 5's shedding and rate limits
    # still refuse for load; sustained, that must reach viability (refusals are not
    # failures, so nothing else would).
    config = _node_config(tmp_path)
    assert config.vsm.concurrency is None
    vsm = VsmSystems(config, EventStream(), LoopSupervisor(), lambda *_: None)
    before = vsm.scores()["node"]
    for outcome in ("overloaded", "shed", "rate_limited", "overloaded", "overloaded"):
        # One second: a tool offered 15 times what it can take.
        now = time.time()
        ran = ToolCallFinished(tool="slow", provider="p", origin="o", zone="public", ts=now)
        refused = msgspec.structs.replace(ran, outcome=outcome)
        vsm.kpis.on_events([ran, *[refused] * 14])
        vsm.overload.tick(0.0)
    assert vsm.overload.pains == 1
    assert vsm.overload.view()["shed"] == 70 and vsm.overload.view()["admitted"] == 5
    vsm.s3.drain()
    assert vsm.scores()["node"] < before
