"""The official MCP SDK client at a node's /mcp, in the revision a test asks for
(`mode="auto"`: 2026-07-28 when the node answers it; `"legacy"`: 2025-11-25)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

MODES = ("auto", "legacy")
# The SDK's own defaults for its transports (mcp.shared._httpx_utils): httpx's 5 s would
# end a response stream, a listen stream included, that is silent for 5 s on a loaded
# machine ("SSE stream ended without a response"), where the node's keep-alive comes
# every 15 s.
TIMEOUT: Final = httpx2.Timeout(30.0, read=300.0)


def mcp_http_client(headers: Mapping[str, str] | None = None) -> httpx2.AsyncClient:
    """An HTTP client for the SDK's streamable HTTP transport, with the SDK's timeouts."""
    return httpx2.AsyncClient(headers=dict(headers or {}), timeout=TIMEOUT)


@asynccontextmanager
async def sdk_client(
    url: str, mode: str = "auto", headers: Mapping[str, str] | None = None, **options: Any
) -> AsyncIterator[Client]:
    """A connected client; `url` is the node's /mcp; `headers` go with every request;
    `options` are more `Client` arguments (callbacks, `log_level`)."""
    async with mcp_http_client(headers) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode, cache=None, **options) as client:
            yield client
