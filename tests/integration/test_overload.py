"""A surge far beyond a provider's capacity on real `vsmcpd` processes, with adaptive
concurrency limits on: what does not fit is refused at once ("overloaded" with a
retry-after, HTTP 503 + Retry-After), what is admitted succeeds, critical calls keep
succeeding while low ones are refused, and membership sees no false verdicts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import (
    NodeProcess,
    counters,
    start_configured,
    tool_call_message,
    wait_mesh_states,
)
from tests.polling import async_wait_until
from vsmcp.node.mcp.protocol import OVERLOADED

pytestmark = pytest.mark.integration

CRITICAL_TOKEN = "critical-token-0123456789"
LOW_TOKEN = "low-token-0123456789abcd"
CAPACITY = 4
SERVICE_MS = 40
SURGE = 160  # concurrent low calls: 40× what the provider serves at once
CRITICAL_CALLS = 20

# The surge comes from one client address: HTTP's per-client connection cap is raised
# so that the calls reach the regulation under test.
REGULATED = f"""
[http]
max_connections_per_client = 1024
[mesh]
preset = "local"
[tools]
entry_points = false
[vsm.concurrency]
min_limit = 2
initial_limit = 8
max_limit = 64
[[mcp.tokens]]
name = "crit"
token = "{CRITICAL_TOKEN}"
zone = "public"
max_priority = "critical"
[[mcp.tokens]]
name = "low"
token = "{LOW_TOKEN}"
zone = "public"
max_priority = "low"
"""
PROVIDER = (
    REGULATED
    + """
[[tools.plugins]]
name = "work"
target = "tests.integration.plugin_tools:work"
"""
)


async def _call(
    http: aiohttp.ClientSession, node: NodeProcess, token: str, priority: str
) -> tuple[int, dict[str, str], dict[str, Any]]:
    body, headers = tool_call_message(
        token,
        "work",
        {"service_ms": SERVICE_MS, "capacity": CAPACITY},
        {"vsmcp/priority": priority},
    )
    async with http.post(node.url + "/mcp", data=json.dumps(body), headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json()


def _bad_verdicts(node: NodeProcess) -> dict[str, str]:
    return {p: s for p, s in node.peer_states().items() if s in ("dead", "zombie", "left")}


async def test_a_surge_is_shed_at_once_while_critical_calls_keep_flowing(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    provider = start_configured(tmp_path, nodes, PROVIDER, "provider")
    entry = start_configured(tmp_path, nodes, REGULATED, "entry")
    for node in (provider, entry):
        node.wait_ready()
    wait_mesh_states([provider, entry], {n.node_id: "alive" for n in (provider, entry)})
    await async_wait_until(
        lambda: any(t["name"] == "work" for t in entry.get_json("/api/tools")["tools"]),
        timeout_s=30,
        what="work offered at the entry node",
    )
    verdicts: list[dict[str, str]] = []
    surge_over = asyncio.Event()

    async def watch_membership() -> None:
        while not surge_over.is_set():
            for node in (provider, entry):
                bad = await asyncio.to_thread(_bad_verdicts, node)
                if bad:
                    verdicts.append(bad)
            await asyncio.sleep(0.1)

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        # Warm up: the limits measure the unloaded latency first.
        for _ in range(20):
            status, _, body = await _call(http, entry, CRITICAL_TOKEN, "normal")
            assert status == 200 and "result" in body, body
        watcher = asyncio.create_task(watch_membership())

        async def critical_stream() -> list[tuple[int, dict[str, Any]]]:
            out = []
            for _ in range(CRITICAL_CALLS):
                status, _, body = await _call(http, entry, CRITICAL_TOKEN, "critical")
                out.append((status, body))
            return out

        critical = asyncio.create_task(critical_stream())
        low = await asyncio.gather(
            *(_call(http, entry, LOW_TOKEN, "critical") for _ in range(SURGE))
        )
        critical_results = await critical
        surge_over.set()
        await watcher

    refused = [(s, h, b) for s, h, b in low if "error" in b]
    served = [b for s, _, b in low if s == 200 and "result" in b]
    # Low calls (capped at low whatever they ask) beyond the limits were refused...
    assert refused, "no call was refused"
    for status, headers, body in refused:
        assert (status, body["error"]["code"]) == (503, OVERLOADED), body
        assert body["error"]["data"]["retry_after_s"] > 0
        assert int(headers["Retry-After"]) >= 1
    # ...the admitted ones were served, and nothing else happened to any call.
    assert served and len(served) + len(refused) == SURGE
    assert all(b["result"].get("isError") is False for b in served)
    # Every critical call succeeded during the surge.
    assert [s for s, _ in critical_results] == [200] * CRITICAL_CALLS
    assert all("result" in b for _, b in critical_results)
    # Membership never gave up on either node while it lasted.
    assert verdicts == []
    # The refusals are counted where S3 shows them, by class.
    s3 = entry.get_json("/api/vsm")["s3"]
    provider_s3 = provider.get_json("/api/vsm")["s3"]
    refused_low = (
        s3["concurrency"]["mcp"]["refused"]["low"]
        + provider_s3["concurrency"]["serve"]["refused"]["low"]
        + provider_s3["units"]["plugin:work"]["shed"]
    )
    assert refused_low >= len(refused)
    assert s3["concurrency"]["mcp"]["refused"]["critical"] == 0
    # Each refusal was an event (the pattern engine and S3 see shedding as it happens).
    denials = (
        counters(entry, "vsmcp_events")["denial"] + counters(provider, "vsmcp_events")["denial"]
    )
    assert denials >= len(refused)


# System 3 lowers the limits' bound once the event loop lags (here: any lag at all, in
# one tick, while calls run) and, with no lag ever at or below 0, never raises it back.
GOVERNED = PROVIDER.replace(
    "max_limit = 64\n",
    """max_limit = 64
s3_lag_high_ms = 0.001
s3_lag_low_ms = 0
s3_lower_after_s = 1
s3_raise_after_s = 600
s3_min_share = 0.25
""",
)


async def test_system3_lowers_the_limits_bound_when_the_loop_lags(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    node = start_configured(tmp_path, nodes, GOVERNED, "governed")
    node.wait_ready()
    assert node.get_json("/api/vsm")["s3"]["overload"]["bound"]["share"] == 1.0
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        def lowered() -> bool:
            return node.get_json("/api/vsm")["s3"]["overload"]["bound"]["share"] < 1.0

        async def calls() -> None:  # calls admitted in every tick, until it moved
            while not await asyncio.to_thread(lowered):
                status, _, body = await _call(http, node, CRITICAL_TOKEN, "normal")
                assert status == 200 and "result" in body, body

        await asyncio.wait_for(calls(), timeout=60)
    s3 = node.get_json("/api/vsm")["s3"]
    share = s3["overload"]["bound"]["share"]
    assert 0.25 <= share <= 0.75 and s3["overload"]["bound"]["changes"] >= 1
    # Every limit of the node is under the new bound: the entries' and the unit's.
    assert s3["concurrency"]["mcp"]["max_limit"] == pytest.approx(64 * share, abs=0.01)
    assert s3["concurrency"]["serve"]["max_limit"] == pytest.approx(64 * share, abs=0.01)
    assert s3["units"]["plugin:work"]["limit"] <= 16 * share + 0.01  # max_concurrency 16
    # Each move was an event.
    assert counters(node, "vsmcp_events").get("s3_bound", 0) >= 1
