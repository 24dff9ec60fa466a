"""A `ToolCatalog` served by a running node's `/mcp`, through the official SDK client.

`vsmcp mcp-stdio` puts this behind the stdio server, so an MCP client that can only
spawn a command (editors, desktop agents) reaches every tool of the mesh through the
local node. The node, not this bridge, decides zones and limits: a bridge bearing the
node's stdio secret (`token`, read from its data dir) gets `mcp.stdio_zone`, one
without it is a loopback HTTP client (`mcp.loopback_zone`); see node/mcp/stdio_auth.py.

The stdio client's way back goes through too: the bridge's SDK client declares
sampling, elicitation and roots to the node and takes its log notifications, like a
mount's (`node.tools.mount_client`), and hands each to the stdio call it belongs to
(the SDK runs them in the call's own task at 2026-07-28, the revision the bridge
speaks to the node); each call asks the node for logs at its client's level.

The node's resources, templates and prompts come through too, as offers tools of the
bridge (`node.mcp.bridge_offers`): the stdio gateway lists, reads, completes and
subscribes through them as through any provider's (its subscriptions all on one listen
at the node, `node.mcp.bridge_listen`). The lists are refreshed with the
tools (every `refresh_interval_s`); a change in either is a change of the catalog, so
the stdio client gets its list-changed notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.mcp.bridge_listen import NodeListen
from vsmcp.node.mcp.bridge_offers import node_offers, offers_specs, run_node_offer
from vsmcp.node.mcp.protocol import McpError
from vsmcp.node.tools.client_channel import META_LOG_LEVEL
from vsmcp.node.tools.model import CallContext, ChangeCallback, ToolResult, ToolSpec
from vsmcp.node.tools.mount_client import MountClient
from vsmcp.node.tools.offers import Offers

if TYPE_CHECKING:
    from mcp_types import RequestParamsMeta

log = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 5.0
# The SDK's own defaults for its HTTP client: a call's answer may take long (the call's
# own deadline is passed per call), connecting should not.
CONNECT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 300.0


class NodeClientCatalog:
    """Tools of the node at `url` (its /mcp). An async context manager."""

    def __init__(
        self, url: str, *, token: str | None = None, refresh_interval_s: float = REFRESH_INTERVAL_S
    ) -> None:
        self._url = url
        self._token = token
        self._refresh_interval_s = refresh_interval_s
        self._client: Client | None = None
        self._listen: NodeListen | None = None
        # The stdio client's side of each call: its logs and the node's requests.
        self._client_side = MountClient("mcp-stdio")
        self._stack = contextlib.AsyncExitStack()
        self._specs: list[ToolSpec] = []
        # The node's offers as this bridge's offers tools (`bridge_offers`).
        self._offers = Offers()
        self._offer_specs: list[ToolSpec] = []
        self._callbacks: list[ChangeCallback] = []
        self._refresher: asyncio.Task[None] | None = None
        self._loops = LoopSupervisor()

    async def __aenter__(self) -> NodeClientCatalog:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        http = await self._stack.enter_async_context(
            httpx2.AsyncClient(
                headers=headers, timeout=httpx2.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
            )
        )
        transport = streamable_http_client(self._url, http_client=http)
        self._client = await self._stack.enter_async_context(
            Client(transport, mode="auto", **self._client_side.client_kwargs())
        )
        self._listen = NodeListen(self._client)
        await self.refresh()
        # Supervised: a refresh failing otherwise than with an MCP error (the node went
        # away) is retried with backoff instead of ending refreshes for good.
        self._refresher = self._loops.spawn("mcp-bridge-refresh", self._refresh_loop)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        if self._listen is not None:
            await self._listen.aclose()
        await self._stack.aclose()

    async def refresh(self) -> None:
        assert self._client is not None
        listed = await self._client.list_tools(cache_mode="bypass")
        specs = [
            ToolSpec(
                name=tool.name,
                description=tool.description or "",
                input_schema=tool.input_schema,
                provider="remote",
            )
            for tool in listed.tools
        ]
        offers = await node_offers(self._client)
        offers_changed = offers != self._offers
        changed = offers_changed or [s.name for s in specs] != [s.name for s in self._specs]
        self._specs = specs
        if offers_changed:
            self._offers = offers
            self._offer_specs = offers_specs(offers)
        if changed:
            for callback in list(self._callbacks):
                callback()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval_s)
            try:
                await self.refresh()
            except MCPError as e:
                log.warning("cannot refresh the tool list: %s", e.message)

    def list_tools(self, ctx: CallContext) -> list[ToolSpec]:
        return list(self._specs)

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any], ctx: CallContext
    ) -> ToolResult:
        assert self._client is not None
        progress = ctx.progress
        level = ctx.client.log_level if ctx.client is not None else None
        meta = cast("RequestParamsMeta", {META_LOG_LEVEL: level} if level is not None else {})
        try:
            with self._client_side.calling(ctx):
                result = await self._client.call_tool(
                    name,
                    dict(arguments),
                    read_timeout_seconds=ctx.remaining_s(),
                    progress_callback=progress,  # type: ignore[arg-type]
                    meta=meta,
                )
        except MCPError as e:
            # The node's own JSON-RPC error, passed through unchanged.
            data = e.data if isinstance(e.data, dict) else None
            raise McpError(e.code, e.message, data) from None
        dumped: dict[str, Any] = result.model_dump(by_alias=True, exclude_none=True)
        return dumped

    def list_offer_tools(self, ctx: CallContext) -> list[ToolSpec]:
        return list(self._offer_specs)

    def all_offer_tools(self) -> list[ToolSpec]:
        return list(self._offer_specs)

    async def call_offers_tool(
        self, name: str, arguments: Mapping[str, Any], ctx: CallContext
    ) -> ToolResult:
        assert self._client is not None and self._listen is not None
        with self._client_side.calling(ctx):  # the node's requests during a read reach ctx
            return await run_node_offer(self._client, self._listen, name, arguments, ctx)

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)
