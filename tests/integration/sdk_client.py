"""The official MCP SDK client at a node's /mcp, in the revision a test asks for
(`mode="auto"`: 2026-07-28 when the node answers it; `"legacy"`: 2025-11-25)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

MODES = ("auto", "legacy")


@asynccontextmanager
async def sdk_client(
    url: str, mode: str = "auto", headers: Mapping[str, str] | None = None, **options: Any
) -> AsyncIterator[Client]:
    """A connected client; `url` is the node's /mcp; `headers` go with every request;
    `options` are more `Client` arguments (callbacks, `log_level`)."""
    async with httpx2.AsyncClient(headers=dict(headers or {})) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode, cache=None, **options) as client:
            yield client
