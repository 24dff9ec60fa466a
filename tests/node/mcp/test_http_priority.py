"""Priority classes at /mcp: `_meta` `vsmcp/priority`, capped by the caller's grant,
a clear error for nonsense, and an immediate 503 + Retry-After when a unit's adaptive
concurrency limit has no room (critical calls still admitted)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.node.mcp.conftest import Server, serve
from tests.node.mcp.test_http_raw import META, modern_headers, post
from tests.node.tools import sample_plugins
from tests.polling import async_wait_until
from vsmcp.node.mcp.http import TokenGrant
from vsmcp.node.mcp.protocol import INVALID_PARAMS, OVERLOADED
from vsmcp.node.tools.config import PluginToolConfig, RateLimitsConfig, ToolsConfig
from vsmcp.node.tools.registry import build_local_catalog
from vsmcp.node.vsm.limiter_settings import LimiterSettings

HIGH_TOKEN = "high-token-0123456789"
CRITICAL_TOKEN = "critical-token-0123456789"
LOW_TOKEN = "low-token-0123456789abc"


def config() -> ToolsConfig:
    return ToolsConfig(
        entry_points=False,
        plugins=[
            PluginToolConfig(name="priority", target="tests.node.tools.sample_plugins:priority"),
            PluginToolConfig(
                name="slow",
                target="tests.node.tools.sample_plugins:slow",
                input_schema={"type": "object", "properties": {"hold_s": {"type": "number"}}},
            ),
        ],
    )


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with build_local_catalog(
        config(), RateLimitsConfig(), status=lambda: {}, peers=lambda: []
    ) as catalog:
        await catalog.supervisor.wait_running()
        srv, runner = await serve(
            catalog,
            tokens={
                HIGH_TOKEN: TokenGrant(zone="public", name="hi", max_priority="high"),
                CRITICAL_TOKEN: TokenGrant(zone="public", name="crit", max_priority="critical"),
                LOW_TOKEN: TokenGrant(zone="public", name="lo", max_priority="low"),
            },
        )
        try:
            yield srv
        finally:
            await runner.cleanup()


async def call(
    server: Server,
    tool: str,
    arguments: dict[str, Any],
    *,
    priority: object = None,
    token: str | None = None,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    meta = dict(META)
    if priority is not None:
        meta["vsmcp/priority"] = priority
    headers = modern_headers("tools/call", tool)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": meta},
    }
    return await post(server.url, body, headers)


@pytest.mark.parametrize(
    ("token", "asked", "got"),
    [
        (None, None, "normal"),
        (None, "critical", "normal"),  # the loopback cap (mcp.loopback_max_priority)
        (None, "low", "low"),
        (HIGH_TOKEN, "critical", "high"),
        (HIGH_TOKEN, "high", "high"),
        (HIGH_TOKEN, "low", "low"),
        (CRITICAL_TOKEN, "critical", "critical"),
        (LOW_TOKEN, None, "low"),  # the default is capped too
    ],
)
async def test_a_priority_above_the_cap_is_capped_not_refused(
    server: Server, token: str | None, asked: str | None, got: str
) -> None:
    status, _, body = await call(server, "priority", {}, priority=asked, token=token)
    assert status == 200, body
    assert body["result"]["structuredContent"] == {"priority": got}


@pytest.mark.parametrize("value", ["urgent", "", 7, ["high"], {"x": 1}, True, "x" * 5000])
async def test_nonsense_priority_is_a_clear_invalid_params_error(
    server: Server, value: object
) -> None:
    status, _, body = await call(server, "priority", {}, priority=value)
    assert (status, body["error"]["code"]) == (400, INVALID_PARAMS)
    message = body["error"]["message"]
    assert "vsmcp/priority" in message and "low, normal, high, critical" in message
    assert len(message) < 400
    assert body["error"]["data"]["allowed"] == ["low", "normal", "high", "critical"]


async def test_beyond_the_limit_a_call_is_refused_at_once_critical_still_runs(
    server: Server,
) -> None:
    supervisor = server.catalog.supervisor
    supervisor.set_limiter_settings(LimiterSettings(min_limit=1, initial_limit=1, max_limit=1))
    refusals: list[float] = []
    server.gateway.refusal_observer = refusals.append
    started = len(sample_plugins.STARTED)
    holder = asyncio.create_task(
        call(server, "slow", {"hold_s": 30}, priority="high", token=HIGH_TOKEN)
    )
    try:
        await async_wait_until(lambda: len(sample_plugins.STARTED) > started, what="slow started")
        status, headers, body = await call(server, "slow", {"hold_s": 0})
        # Refused while the first call still holds the only slot: not queued behind it.
        assert not holder.done()
        assert (status, body["error"]["code"]) == (503, OVERLOADED)
        data = body["error"]["data"]
        assert data["limit"] == "adaptive_concurrency" and data["priority"] == "normal"
        assert data["retry_after_s"] > 0
        assert int(headers["Retry-After"]) >= 1
        assert len(refusals) == 1 and refusals[0] > 0  # the refusal was timed
        # The same full unit still takes a critical call (never refused for load).
        status, _, body = await call(
            server, "slow", {"hold_s": 0}, priority="critical", token=CRITICAL_TOKEN
        )
        assert status == 200 and body["result"]["content"][0]["text"] == "slow done"
        assert len(refusals) == 1  # an answered call is not a refusal
        limiter = supervisor.units["plugin:slow"].gate.limiter  # type: ignore[union-attr]
        assert limiter.refused == {"low": 0, "normal": 1, "high": 0, "critical": 0}
        assert limiter.admitted["critical"] == 1
    finally:
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
