"""node.app: the replay guard across restarts (clean stop, crash, changed skew bounds);
the policies cap wiring."""

from __future__ import annotations

from pathlib import Path

from vsmcp.mesh.envelope import wall_clock_ms
from vsmcp.node.app.config import Config, load_config
from vsmcp.node.app.node import KV_RUN_STATE, RUN_STATE_RUNNING, Node
from vsmcp.node.store.database import Store


def _config(data_dir: Path, **envelope: int) -> Config:
    overrides: dict[str, object] = {"node.data_dir": str(data_dir), "node.dev": True}
    overrides.update({f"envelope.{key}": value for key, value in envelope.items()})
    return load_config(environ={}, overrides=overrides)


async def _guard_floor_after_start(data_dir: Path, **envelope: int) -> int:
    async with Store.open(data_dir) as store:
        guard = await Node(_config(data_dir, **envelope))._restore_replay_guard(store)
        return guard.floor_ms


async def _crash(data_dir: Path) -> None:
    """What a kill -9 leaves: the run state still says running, no final dump."""
    async with Store.open(data_dir) as store:
        assert await store.kv_get(KV_RUN_STATE) == RUN_STATE_RUNNING


async def test_a_fresh_data_dir_has_no_floor(tmp_path: Path) -> None:
    assert await _guard_floor_after_start(tmp_path) < 0


async def test_after_a_crash_the_floor_is_restart_plus_the_future_skew(tmp_path: Path) -> None:
    await _guard_floor_after_start(tmp_path, max_future_skew_s=5)
    await _crash(tmp_path)
    before = wall_clock_ms()
    floor = await _guard_floor_after_start(tmp_path, max_future_skew_s=5)
    after = wall_clock_ms()
    # Not the 30 s past window: a crashed node rejoins after about 5 s.
    assert before + 5_000 <= floor <= after + 5_000


async def test_a_shortened_future_skew_does_not_shorten_the_floor_of_a_crash(
    tmp_path: Path,
) -> None:
    # The crashed run accepted envelopes up to 20 s ahead; the new config says 2 s.
    await _guard_floor_after_start(tmp_path, max_future_skew_s=20)
    await _crash(tmp_path)
    before = wall_clock_ms()
    floor = await _guard_floor_after_start(tmp_path, max_future_skew_s=2)
    assert floor >= before + 20_000
    # That run crashes too, before its floor has passed: the next one still refuses
    # everything the first run may have accepted, though its own bound is 2 s.
    await _crash(tmp_path)
    floor_again = await _guard_floor_after_start(tmp_path, max_future_skew_s=2)
    assert floor_again >= floor


async def test_the_policies_cap_is_configured_and_its_refusals_are_a_metric(
    tmp_path: Path,
) -> None:
    # Free ports, no multicast, no plugins: a node that shares the machine quietly.
    quiet = {"http.port": 0, "mesh.port": 0, "mesh.preset": "local", "mesh.mdns": False}
    overrides = {**quiet, "node.dev": True, "tools.entry_points": False}
    overrides["replication.max_policies_per_issuer"] = 3
    config = load_config(environ={}, overrides={"node.data_dir": str(tmp_path), **overrides})
    async with Node(config) as node:
        assert node._replication is not None
        policies = node._replication.state.policies
        assert policies.max_per_issuer == 3
        policies.over_cap["mitigation"] += 1
        metrics = node.render_metrics().decode()
        assert 'vsmcp_policies_over_cap_total{kind="mitigation"} 1.0' in metrics


async def test_viability_and_routing_count_the_client_tools_of_the_registry(
    tmp_path: Path,
) -> None:
    """As /api/tools lists them: the offers tools (vsm.mcp.<unit>) are left out."""
    quiet = {"http.port": 0, "mesh.port": 0, "mesh.preset": "local", "mesh.mdns": False}
    overrides = {**quiet, "node.dev": True, "tools.entry_points": False}
    config = load_config(environ={}, overrides={"node.data_dir": str(tmp_path), **overrides})
    async with Node(config) as node:
        offers = [row["name"] for row in node.offer_tools()]
        assert "vsm.mcp.node" in offers
        tools = len(node.tools())
        inputs = node.vsm.viability_inputs()
        assert (inputs.mesh_tools_reachable, inputs.mesh_tools) == (tools, tools) != (0, 0)
        assert node.vsm.view()["s2"]["routing"]["registry_tools"] == tools
