"""Mounted external MCP servers: their tools become local tools, through the official client.

The unit's task holds one `mcp.client.client.Client` (stdio subprocess or Streamable
HTTP) for the provider's lifetime: the SDK's anyio scopes must be entered and left in
the same task. A health probe (`tools/list`, which also picks up tool changes) runs
every `health_interval_s`; a dead process or connection makes the provider end with
`UnitFault`, so the supervisor restarts it. Stop is cooperative (the `stop` event),
letting the SDK close stdin, wait and kill the process group as it is designed to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import anyio
import httpx2
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, RequestParamsMeta, Tool

from vsmcp.node.tools.config import MountConfig
from vsmcp.node.tools.errors import ProviderError, UnitFault, UnknownTool
from vsmcp.node.tools.model import (
    META_CAUSALITY,
    META_ORIGIN,
    META_TRACE_ID,
    CallContext,
    ToolResult,
    ToolSpec,
)

log = logging.getLogger(__name__)

MAX_LIST_PAGES = 50
RESULT_KEYS = ("content", "isError", "structuredContent")
_DEAD_CONNECTION = (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError, EOFError)


class MountedServer:
    """Provider for one external MCP server (`MountConfig`)."""

    def __init__(self, cfg: MountConfig) -> None:
        self._cfg = cfg
        self._prefix = cfg.name if cfg.namespace is None else cfg.namespace
        self._client: Client | None = None
        self._specs: tuple[ToolSpec, ...] = ()
        self._remote: dict[str, str] = {}
        self._on_change: Callable[[], None] | None = None

    @property
    def name(self) -> str:
        return f"mount:{self._cfg.name}"

    def set_on_change(self, callback: Callable[[], None]) -> None:
        self._on_change = callback

    def tools(self) -> Sequence[ToolSpec]:
        return self._specs

    def _local_name(self, remote: str) -> str:
        return f"{self._prefix}.{remote}" if self._prefix else remote

    def _spec(self, tool: Tool) -> ToolSpec:
        annotations = (
            tool.annotations.model_dump(by_alias=True, mode="json", exclude_none=True)
            if tool.annotations is not None
            else None
        )
        return ToolSpec(
            name=self._local_name(tool.name),
            description=tool.description or "",
            input_schema=dict(tool.input_schema),
            zone=self._cfg.tool_zones.get(tool.name, self._cfg.zone),
            provider="mounted",
            annotations=annotations or None,
            output_schema=dict(tool.output_schema) if tool.output_schema else None,
            title=tool.title,
        )

    async def _refresh(self, client: Client) -> None:
        tools: list[Tool] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await client.list_tools(cursor=cursor, cache_mode="bypass")
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        specs = tuple(self._spec(t) for t in tools)
        changed = specs != self._specs
        self._specs = specs
        self._remote = {self._local_name(t.name): t.name for t in tools}
        if changed and self._client is not None and self._on_change is not None:
            self._on_change()

    async def _open(self, stack: contextlib.AsyncExitStack) -> Client:
        cfg = self._cfg
        target: Any
        if cfg.command is not None:
            target = StdioServerParameters(
                command=cfg.command, args=list(cfg.args), env=dict(cfg.env) or None, cwd=cfg.cwd
            )
        else:
            assert cfg.url is not None
            if cfg.headers:
                http = await stack.enter_async_context(httpx2.AsyncClient(headers=cfg.headers))
                target = streamable_http_client(cfg.url, http_client=http)
            else:
                target = cfg.url
        return await stack.enter_async_context(Client(target, mode=cfg.mode, cache=None))

    async def run(self, ready: Callable[[], None], stop: asyncio.Event) -> None:
        cfg = self._cfg
        async with contextlib.AsyncExitStack() as stack:
            client = await self._open(stack)
            await self._refresh(client)
            self._client = client
            ready()
            try:
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=cfg.health_interval_s)
                        return
                    try:
                        async with asyncio.timeout(cfg.health_timeout_s):
                            await self._refresh(client)
                    except (MCPError, TimeoutError, *_DEAD_CONNECTION) as exc:
                        raise UnitFault(f"mount {cfg.name!r} health check failed: {exc!r}") from exc
            finally:
                self._client = None

    async def call(self, tool: str, arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        remote = self._remote.get(tool)
        if remote is None:
            raise UnknownTool(tool)
        client = self._client
        if client is None:
            raise UnitFault(f"mount {self._cfg.name!r} is not connected")

        async def forward(progress: float, total: float | None, message: str | None) -> None:
            await ctx.report_progress(progress, total, message)

        try:
            result = await client.call_tool(
                remote,
                dict(arguments),
                progress_callback=forward if ctx.progress is not None else None,
                meta=_trace_meta(ctx),
            )
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                raise UnitFault(f"mount {self._cfg.name!r}: connection closed") from exc
            raise ProviderError(tool, exc.error.message, exc.code) from exc
        except _DEAD_CONNECTION as exc:
            raise UnitFault(f"mount {self._cfg.name!r}: {exc!r}") from exc
        dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        return {key: dumped[key] for key in RESULT_KEYS if key in dumped}


def _trace_meta(ctx: CallContext) -> RequestParamsMeta:
    """The call's context for the mounted server, in the request's `_meta`: its own logs
    can then be joined with our audit log by trace id."""
    meta = {
        META_TRACE_ID: ctx.trace_id,
        META_CAUSALITY: list(ctx.causality),
        META_ORIGIN: ctx.origin,
    }
    return cast(RequestParamsMeta, meta)  # an open map: extra keys are allowed
