"""Routing: circuit breaker, provider choice with hysteresis, zone lowering (pure), and
calls across two real nodes in one process (progress, cancellation, zone escalation,
provider-side limits, structured errors), through their /mcp endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.client.client import Client

from tests.node.slow_call import cancel_once_started
from tests.node.tools import sample_plugins
from tests.polling import async_wait_for
from vsmcp.mesh.certs import DEFAULT_ZONES, ZoneOrder
from vsmcp.node.app.config import load_config
from vsmcp.node.app.node import Node
from vsmcp.node.mcp.protocol import INVALID_PARAMS, RATE_LIMITED, ZONE_DENIED
from vsmcp.node.routing.catalog import (
    BREAKER_COOLDOWN_S,
    BREAKER_FAILURES,
    BREAKER_MAX_COOLDOWN_S,
    MIN_DWELL_S,
    CircuitBreaker,
    ProviderSelector,
    effective_zone,
)

# -- circuit breaker -------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_and_probes_once_when_half_open() -> None:
    breaker = CircuitBreaker()
    for _ in range(BREAKER_FAILURES - 1):
        breaker.on_failure(0.0)
    assert breaker.state(0.0) == "closed"
    breaker.on_success()
    for _ in range(BREAKER_FAILURES):
        breaker.on_failure(1.0)
    assert breaker.state(1.0) == "open" and not breaker.allows(1.0)
    assert breaker.retry_after_s(1.0) == pytest.approx(BREAKER_COOLDOWN_S)
    later = 1.0 + BREAKER_COOLDOWN_S
    assert breaker.state(later) == "half_open" and breaker.allows(later)
    breaker.on_attempt(later)
    assert not breaker.allows(later)  # one probe at a time
    breaker.on_failure(later)  # the probe failed: open again, twice as long
    assert breaker.state(later) == "open"
    assert breaker.retry_after_s(later) == pytest.approx(2 * BREAKER_COOLDOWN_S)
    again = later + 2 * BREAKER_COOLDOWN_S
    breaker.on_attempt(again)
    breaker.on_success()
    assert breaker.state(again) == "closed" and breaker.allows(again)


# -- provider choice -------------------------------------------------------------------------


def test_prefers_the_faster_provider_and_fails_over_in_order() -> None:
    sel = ProviderSelector()
    sel.on_success("a", 0.050)
    sel.on_success("b", 0.001)
    order = sel.order("t", [("a", "alive"), ("b", "alive")], 0.0)
    assert order[0] == "b" and order == ["b", "a"]


def test_retain_forgets_providers_and_tools_gone_from_the_registry() -> None:
    sel = ProviderSelector()
    sel.order("t", [("a", "alive"), ("b", "alive")], 0.0)
    sel.order("u", [("c", "alive")], 0.0)
    sel.on_attempt("c", 0.0)  # a call to c is still in flight
    for _ in range(BREAKER_FAILURES):
        sel.on_failure("b", 0.0, 1.0)  # b's breaker opens
    sel.retain({"a"}, {"t"}, now=0.0)
    assert set(sel.health) == {"a", "b", "c"}
    assert sel.preferred("t") is not None and sel.preferred("u") is None
    sel.on_done("c")
    sel.retain({"a"}, {"t"}, now=0.0)
    assert set(sel.health) == {"a", "b"}
    sel.retain({"a"}, {"t"}, now=BREAKER_MAX_COOLDOWN_S + 1)  # b's cool-down is over
    assert set(sel.health) == {"a"}


def test_alive_beats_suspect_at_equal_latency() -> None:
    sel = ProviderSelector()
    assert sel.order("t", [("a", "suspect"), ("b", "alive")], 0.0) == ["b", "a"]


def test_sticks_to_the_preferred_provider_until_another_is_clearly_better() -> None:
    sel = ProviderSelector()
    candidates = [("a", "alive"), ("b", "alive")]
    first = sel.order("t", candidates, 0.0)[0]
    other = "b" if first == "a" else "a"
    # Somewhat better is not enough.
    for _ in range(50):
        sel.on_success(first, 0.004)
        sel.on_success(other, 0.003)
    assert sel.order("t", candidates, 10.0)[0] == first
    # Clearly better, but not before the minimum dwell time on the current one.
    for _ in range(50):
        sel.on_success(other, 0.0005)
    sel2 = sel.order("t", candidates, 10.0)[0]
    assert sel2 == other  # 10 s since the preference was set: dwell passed
    for _ in range(50):
        sel.on_success(first, 0.0001)
    assert sel.order("t", candidates, 10.0 + MIN_DWELL_S / 2)[0] == other  # too soon


@settings(max_examples=200, deadline=None)
@given(
    latencies=st.lists(
        st.tuples(st.floats(0.001, 0.0019), st.floats(0.001, 0.0019)), min_size=1, max_size=200
    )
)
def test_no_flapping_while_providers_stay_within_the_switch_ratio(
    latencies: list[tuple[float, float]],
) -> None:
    """Noisy but comparable providers (latencies within 2x): one choice, never a switch."""
    sel = ProviderSelector()
    candidates = [("a", "alive"), ("b", "alive")]
    now = 0.0
    first = sel.order("t", candidates, now)[0]
    for la, lb in latencies:
        now += 1.0
        chosen = sel.order("t", candidates, now)[0]
        assert chosen == first
        sel.on_attempt(chosen, now)
        sel.on_success(chosen, la if chosen == "a" else lb)
        sel.on_done(chosen)
        sel.on_success("b" if chosen == "a" else "a", lb if chosen == "a" else la)
    assert sel.switches == 0


def test_a_failure_moves_traffic_and_an_open_breaker_excludes_the_node() -> None:
    sel = ProviderSelector()
    candidates = [("a", "alive"), ("b", "alive")]
    first = sel.order("t", candidates, 0.0)[0]
    other = "b" if first == "a" else "a"
    sel.on_failure(first, 0.0, 1.0)
    assert sel.order("t", candidates, 0.1)[0] == other
    for _ in range(BREAKER_FAILURES):
        sel.on_failure(first, 0.2, 1.0)
    assert sel.order("t", candidates, 0.3) == [other]
    assert sel.retry_after_s([first], "t", 0.3) == pytest.approx(BREAKER_COOLDOWN_S - 0.1)


def test_a_refusal_sends_that_tool_elsewhere_first_and_tries_the_node_last() -> None:
    sel = ProviderSelector()
    candidates = [("a", "alive"), ("b", "alive")]
    sel.on_success("a", 0.001)
    sel.on_success("b", 0.010)
    assert sel.order("t", candidates, 0.0)[0] == "a"
    sel.on_refusal("t", "a", 0.0, 0.5)
    assert sel.order("t", candidates, 0.1) == ["b", "a"]
    assert sel.order("u", candidates, 0.1)[0] == "a"  # other tools are not affected
    assert sel.order("t", [("a", "alive")], 0.1) == ["a"]  # the only one: still asked


def test_load_counts_calls_in_flight() -> None:
    sel = ProviderSelector()
    candidates = [("a", "alive"), ("b", "alive")]
    for _ in range(4):
        sel.on_attempt("a", 0.0)
    assert sel.order("t", candidates, 0.0)[0] == "b"


# -- zones ---------------------------------------------------------------------------------

ZONES = ZoneOrder(DEFAULT_ZONES)


@given(claimed=st.sampled_from(DEFAULT_ZONES), certified=st.sampled_from(DEFAULT_ZONES))
def test_effective_zone_never_exceeds_the_claim_or_the_certificate(
    claimed: str, certified: str
) -> None:
    zone = effective_zone(ZONES, claimed, certified)
    assert ZONES.allows(claimed, zone) and ZONES.allows(certified, zone)
    assert zone in (claimed, certified)


def test_unknown_zones_stay_unknown() -> None:
    assert effective_zone(ZONES, "root", "restricted") == "root"
    assert effective_zone(ZONES, "ops", "weird") == "weird"


# -- two real nodes in one process --------------------------------------------------------

MODERN = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
CONCURRENT_SLOW_CALLS = 100  # beyond the 64 one caller keeps in flight to one peer
SLOW_SCHEMA = {
    "type": "object",
    "properties": {"steps": {"type": "integer"}, "hold_s": {"type": "number"}},
}


def _config(data_dir: Path, **extra: Any) -> Any:
    overrides = {
        "node.data_dir": str(data_dir),
        "node.dev": True,
        "node.debug_api": True,
        "http.port": 0,
        "mesh.port": 0,
        "mesh.preset": "local",
        "mesh.mdns": False,
        "tools.entry_points": False,
        **extra,
    }
    return load_config(overrides=overrides)


@dataclass
class Pair:
    provider: Node
    entry: Node

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.entry.http_port}/mcp"


@contextlib.asynccontextmanager
async def seeded_pair(
    tmp_path: Path, provider: dict[str, Any], entry: dict[str, Any]
) -> AsyncIterator[Pair]:
    """A provider node and an entry node seeded with it (config overrides for each)."""
    async with Node(_config(tmp_path / "a", **provider)) as provider_node:
        seed = f"{provider_node.identity.node_id}@127.0.0.1:{provider_node.mesh_port}"
        async with Node(_config(tmp_path / "b", **{"mesh.seeds": [seed], **entry})) as entry_node:
            yield Pair(provider_node, entry_node)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    plugins = [
        {
            "name": "slow",
            "target": "tests.node.tools.sample_plugins:slow",
            "input_schema": SLOW_SCHEMA,
            "limits": {"max_concurrency": 2 * CONCURRENT_SLOW_CALLS},
        }
    ]
    provider_cfg = {
        "tools.plugins": plugins,
        "limits.tools": {"limited.echo": {"rate_per_s": 0.01, "burst": 1}},
    }
    # The entry node is certified "public" but lets loopback callers claim "restricted".
    entry_cfg = {"trust.dev_zone": "public", "mcp.loopback_zone": "restricted"}
    async with seeded_pair(tmp_path, provider_cfg, entry_cfg) as result:
        result.provider.debug_tool("ops.echo", "ops", True)
        result.provider.debug_tool("limited.echo", "public", True)
        await async_wait_for(
            lambda: _has_tools(result, {"slow", "ops.echo", "limited.echo"}),
            timeout_s=20,
            what="provider tools listed at the entry node",
        )
        yield result


async def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": body["method"]}
    if body["method"] == "tools/call":
        headers["Mcp-Name"] = body["params"]["name"]
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as r,
    ):
        return r.status, await r.json()


async def _call(url: str, name: str, arguments: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    params = {"name": name, "arguments": arguments, "_meta": MODERN}
    return await _post(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})


async def _has_tools(pair: Pair, names: set[str]) -> bool:
    _, body = await _post(
        pair.url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN}}
    )
    return names <= {t["name"] for t in body["result"]["tools"]}


async def test_more_concurrent_calls_than_the_in_flight_window_all_succeed(pair: Pair) -> None:
    calls = [
        _call(pair.url, "slow", {"steps": 0, "hold_s": 0.2}) for _ in range(CONCURRENT_SLOW_CALLS)
    ]
    results = await asyncio.gather(*calls)
    failed = [body for status, body in results if status != 200 or "error" in body]
    assert failed == []
    assert pair.entry.mesh.call_counts()["queued"] >= CONCURRENT_SLOW_CALLS - 64
    assert pair.provider.mesh.call_counts().get("busy", 0) == 0


async def test_remote_tool_is_called_on_its_provider(pair: Pair) -> None:
    status, body = await _call(pair.url, "limited.echo", {"x": 1})
    assert status == 200, body
    assert body["result"]["content"][0]["text"] == '{"x": 1}'
    assert body["result"]["_meta"]["vsmcp/provider"] == pair.provider.identity.node_id


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_progress_crosses_the_mesh_in_order_before_the_result(pair: Pair, mode: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(pair.url, mode=mode, cache=None) as client:
        result = await client.call_tool("slow", {"steps": 3}, progress_callback=on_progress)
    assert result.content[0].text == "slow done"  # type: ignore[union-attr]
    assert seen == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_cancelling_at_the_entry_cancels_the_call_on_the_provider(
    pair: Pair, mode: str
) -> None:
    async with Client(pair.url, mode=mode, cache=None) as client:
        await cancel_once_started(client)
    assert sample_plugins.CANCELLED[-1] == sample_plugins.STARTED[-1]


async def test_an_entry_node_cannot_escalate_beyond_its_certificate(pair: Pair) -> None:
    # The caller is "restricted" at the entry node, which is certified only "public":
    # the provider lowers the zone and its own policy denies the "ops" tool.
    status, body = await _call(pair.url, "ops.echo", {})
    assert status == 403, body
    error = body["error"]
    assert error["code"] == ZONE_DENIED
    assert error["data"]["policy"] == "zone-order"
    assert error["data"]["zone"] == "public" and error["data"]["tool_zone"] == "ops"


async def test_a_provider_side_rate_limit_reaches_the_caller_with_retry_after(pair: Pair) -> None:
    codes = []
    for _ in range(3):
        status, body = await _call(pair.url, "limited.echo", {})
        codes.append(status)
    assert codes[0] == 200 and codes[-1] == 429, body
    assert body["error"]["code"] == RATE_LIMITED
    assert body["error"]["data"]["limit"] == "per-tool"
    assert body["error"]["data"]["retry_after_s"] > 0


async def test_unknown_tool_and_bad_arguments_are_clear(pair: Pair) -> None:
    status, body = await _call(pair.url, "no.such.tool", {})
    assert (status, body["error"]["code"]) == (400, INVALID_PARAMS)
    assert "no.such.tool" in body["error"]["message"]
    status, body = await _call(pair.url, "slow", {"steps": "three"})
    assert (status, body["error"]["code"]) == (400, INVALID_PARAMS)
    assert body["error"]["data"]["path"] == "arguments.steps"


async def test_audit_entries_at_both_ends(pair: Pair) -> None:
    status, _ = await _call(pair.url, "limited.echo", {"audit": True})
    assert status == 200
    for node in (pair.entry, pair.provider):
        await node.audit.flush()
    entry_rows = await _audit_rows(pair.entry, "tool.call")
    serve_rows = await _audit_rows(pair.provider, "tool.serve")
    assert any(r["tool"] == "limited.echo" and r["outcome"] == "ok" for r in entry_rows)
    served = [r for r in serve_rows if r["tool"] == "limited.echo"]
    assert served and served[-1]["entry"] == pair.entry.identity.node_id
    assert (
        served[-1]["trace_id"]
        == [r for r in entry_rows if r["tool"] == "limited.echo"][-1]["trace_id"]
    )


async def _audit_rows(node: Node, kind: str) -> list[dict[str, Any]]:
    store = node._store
    assert store is not None
    async with store.conn.execute(
        "SELECT data FROM audit_entries WHERE kind = ? ORDER BY seq", (kind,)
    ) as cur:
        rows = await cur.fetchall()
    return [json.loads(r[0]) for r in rows]


# -- fair limits across the mesh ------------------------------------------------------------

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab"}


@pytest.fixture
async def limited_pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """A provider limiting each caller to 2 calls and each entry node to 3 (no refill
    during the test); an entry node with two token holders, Alice and Bob."""
    slow_refill = 0.001
    provider_cfg = _config(
        tmp_path / "a",
        **{
            "limits.per_origin": {"rate_per_s": slow_refill, "burst": 2},
            "limits.per_peer": {"rate_per_s": slow_refill, "burst": 3},
        },
    )
    async with Node(provider_cfg) as provider:
        seed = f"{provider.identity.node_id}@127.0.0.1:{provider.mesh_port}"
        tokens = [{"name": n, "token": t, "zone": "public"} for n, t in TOKENS.items()]
        entry_cfg = _config(tmp_path / "b", **{"mesh.seeds": [seed], "mcp.tokens": tokens})
        async with Node(entry_cfg) as entry:
            provider.debug_tool("shared.echo", "public", True)
            result = Pair(provider, entry)
            await async_wait_for(
                lambda: _has_tools(result, {"shared.echo"}),
                timeout_s=20,
                what="provider tool listed at the entry node",
            )
            yield result


async def _call_as(url: str, who: str) -> tuple[int, dict[str, Any]]:
    params = {"name": "shared.echo", "arguments": {}, "_meta": MODERN}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    headers = {
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "shared.echo",
        "Authorization": f"Bearer {TOKENS[who]}",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as r,
    ):
        return r.status, await r.json()


async def test_callers_behind_one_entry_node_have_their_own_buckets_under_a_peer_cap(
    limited_pair: Pair,
) -> None:
    url, entry_id = limited_pair.url, limited_pair.entry.identity.node_id
    assert [(await _call_as(url, "alice"))[0] for _ in range(2)] == [200, 200]
    status, body = await _call_as(url, "alice")
    assert status == 429, body
    data = body["error"]["data"]
    assert (data["limit"], data["key"]) == ("per-origin", f"mesh:{entry_id}/http:alice")
    # Alice used up her bucket at the provider, not Bob's.
    status, body = await _call_as(url, "bob")
    assert status == 200, body
    # The entry node as a whole is capped at 3: Bob's second call is over that.
    status, body = await _call_as(url, "bob")
    assert status == 429, body
    assert (body["error"]["data"]["limit"], body["error"]["data"]["key"]) == (
        "per-peer",
        f"mesh:{entry_id}",
    )
