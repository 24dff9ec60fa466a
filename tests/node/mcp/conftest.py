"""A real aiohttp server on 127.0.0.1 serving /mcp over a real LocalCatalog."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from vsmcp.node.http.policy import RequestPolicy
from vsmcp.node.http.server import app_runner
from vsmcp.node.mcp.http import McpGateway, TokenGrant, register_mcp_routes
from vsmcp.node.tools.config import PluginToolConfig, RateLimitConfig, RateLimitsConfig, ToolsConfig
from vsmcp.node.tools.registry import LocalCatalog, build_local_catalog

PUBLIC_TOKEN = "public-token-0123456789"
OPS_TOKEN = "ops-token-0123456789abc"


def tools_config() -> ToolsConfig:
    cfg = ToolsConfig(
        entry_points=False,
        plugins=[
            PluginToolConfig(name="add", target="tests.node.tools.sample_plugins:add"),
            PluginToolConfig(
                name="slow",
                target="tests.node.tools.sample_plugins:slow",
                input_schema={
                    "type": "object",
                    "properties": {"steps": {"type": "integer"}, "hold_s": {"type": "number"}},
                },
            ),
            PluginToolConfig(
                name="ops.restart", target="tests.node.tools.sample_plugins:add", zone="ops"
            ),
        ],
    )
    return cfg


LIMITS = RateLimitsConfig(tools={"vsm.status": RateLimitConfig(rate_per_s=0.01, burst=1)})


@dataclass
class Server:
    url: str
    catalog: LocalCatalog
    gateway: McpGateway
    app: web.Application


async def serve(
    catalog: LocalCatalog,
    *,
    loopback_zone: str | None = "public",
    allowed_hosts: list[str] | None = None,
    tokens: dict[str, str | TokenGrant] | None = None,
    **kw: object,
) -> tuple[Server, web.AppRunner]:
    # The node's Host/Origin policy, as `node.http.build_app` applies it to every route.
    policy = RequestPolicy(allowed_hosts, allowed_origins=["http://localhost:6274"])
    app = web.Application(middlewares=[policy.middleware()])
    gateway = register_mcp_routes(
        app,
        catalog,
        tokens=tokens
        if tokens is not None
        else {PUBLIC_TOKEN: "public", OPS_TOKEN: TokenGrant(zone="ops", name="ops")},
        loopback_zone=loopback_zone,
        **kw,  # type: ignore[arg-type]
    )
    runner = app_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return Server(f"http://127.0.0.1:{port}/mcp", catalog, gateway, app), runner


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with build_local_catalog(
        tools_config(), LIMITS, status=lambda: {"node": "n1"}, peers=lambda: []
    ) as catalog:
        await catalog.supervisor.wait_running()
        srv, runner = await serve(catalog)
        try:
            yield srv
        finally:
            await runner.cleanup()
