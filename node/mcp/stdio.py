"""MCP over stdio: newline-delimited JSON-RPC on a reader/writer pair.

Speaks 2025-11-25 (`initialize`, `notifications/cancelled`, `notifications/tools/
list_changed` after initialize) and answers 2026-07-28 clients too (`server/discover`,
requests carrying the `_meta` envelope, `subscriptions/listen`). The caller is the
local user: every call runs as `Caller("stdio", zone, "stdio")`.

Bounds: a line longer than `max_line_bytes` is answered with a parse error and
skipped; at most `max_inflight` calls run at once (more are refused as overloaded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import Any, Final

from vsmcp.node.mcp.client_requests import ClientState, declared, modern_state
from vsmcp.node.mcp.offers import LIST_CHANGED
from vsmcp.node.mcp.protocol import (
    INVALID_REQUEST,
    META_CLIENT_CAPABILITIES,
    META_PROTOCOL_VERSION,
    META_SUBSCRIPTION_ID,
    MODERN_VERSIONS,
    OVERLOADED,
    PARSE_ERROR,
    REQUEST_CANCELLED,
    Caller,
    McpCore,
    McpError,
    Message,
    decode,
    encode,
    error_message,
    notification,
    result_message,
)
from vsmcp.node.tools.model import ToolCatalog

log = logging.getLogger(__name__)

DEFAULT_MAX_LINE_BYTES: Final = 1 << 20
DEFAULT_MAX_INFLIGHT: Final = 64
STDIO_OWNER: Final = "stdio"


class _StdioConnection:
    def __init__(
        self,
        catalog: ToolCatalog,
        writer: asyncio.StreamWriter,
        caller: Caller,
        max_inflight: int,
    ) -> None:
        self.core = McpCore(catalog)
        self.writer = writer
        self.caller = caller
        self.max_inflight = max_inflight
        self.inflight: dict[Any, asyncio.Task[None]] = {}
        self.lock = asyncio.Lock()
        self.initialized = False
        self.listen_ids: list[Any] = []
        # The client's capabilities (from initialize) and log level (logging/setLevel).
        self.client = ClientState(STDIO_OWNER, frozenset())

    async def send(self, message: dict[str, Any]) -> None:
        async with self.lock:
            self.writer.write(encode(message) + b"\n")
            await self.writer.drain()

    def tools_changed(self) -> None:
        messages: list[dict[str, Any]] = []
        if self.initialized:
            messages.extend(notification(method) for method in LIST_CHANGED)
        messages.extend(
            notification(LIST_CHANGED[0], {"_meta": {META_SUBSCRIPTION_ID: i}})
            for i in self.listen_ids
        )
        for message in messages:
            task = asyncio.create_task(self.send(message), name="mcp-stdio:list-changed")
            task.add_done_callback(_log_failure)

    async def on_line(self, line: bytes) -> None:
        try:
            message = decode(line)
        except McpError as exc:
            await self.send(error_message(None, exc))
            return
        if message.is_response:
            self.core.client_requests.answer(STDIO_OWNER, message.raw)
            return
        if message.is_notification:
            if message.method == "notifications/cancelled":
                task = self.inflight.get(message.params.get("requestId"))
                if task is not None:
                    task.cancel()
            return
        method = message.method
        if method == "initialize":
            self.initialized = True
            self.client.capabilities = declared(message.params.get("capabilities"))
            await self.send(result_message(message.id, self.core.initialize_result(message.params)))
        elif method == "server/discover":
            await self.send(result_message(message.id, self.core.discover_result()))
        elif method == "subscriptions/listen":
            wanted = message.params.get("notifications")
            honored = (
                {"toolsListChanged": True}
                if isinstance(wanted, dict) and wanted.get("toolsListChanged")
                else {}
            )
            if honored:
                self.listen_ids.append(message.id)
            ack = {"notifications": honored, "_meta": {META_SUBSCRIPTION_ID: message.id}}
            await self.send(notification("notifications/subscriptions/acknowledged", ack))
        elif message.id in self.inflight:
            await self.send(
                error_message(message.id, McpError(INVALID_REQUEST, "Duplicate request id"))
            )
        elif len(self.inflight) >= self.max_inflight:
            busy = McpError(
                OVERLOADED, "Too many calls in flight", {"limit": "inflight", "retry_after_s": 0.1}
            )
            await self.send(error_message(message.id, busy))
        else:
            self.inflight[message.id] = asyncio.create_task(
                self._call(message), name=f"mcp-stdio:call:{message.id}"
            )

    async def _call(self, message: Message) -> None:
        modern = message.meta.get(META_PROTOCOL_VERSION) in MODERN_VERSIONS
        try:
            client = (
                modern_state(message.meta, message.meta.get(META_CLIENT_CAPABILITIES))
                if modern
                else self.client
            )
            result = await self.core.handle(
                message, self.caller, modern=modern, notify=self.send, client=client
            )
            reply = result_message(message.id, result)
        except asyncio.CancelledError:
            reply = error_message(message.id, McpError(REQUEST_CANCELLED, "Request cancelled"))
        except Exception as exc:  # noqa: BLE001 - top-level handler; error_message logs the unexpected
            reply = error_message(message.id, exc)
        finally:
            self.inflight.pop(message.id, None)
        with contextlib.suppress(ConnectionError):
            await self.send(reply)

    async def close(self) -> None:
        tasks = list(self.inflight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        # Graceful end of open subscriptions.
        for listen_id in self.listen_ids:
            with contextlib.suppress(ConnectionError):
                await self.send(
                    result_message(listen_id, {"_meta": {META_SUBSCRIPTION_ID: listen_id}})
                )


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("stdio notification not delivered: %r", task.exception())


async def serve_stdio(
    catalog: ToolCatalog,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    zone: str = "public",
    caller_id: str = "stdio",
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
) -> None:
    """Serve one MCP client on `reader`/`writer` until end of input; then cancel its calls."""
    conn = _StdioConnection(catalog, writer, Caller(caller_id, zone, "stdio"), max_inflight)
    unsubscribe = catalog.on_change(conn.tools_changed)
    try:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as eof:
                if eof.partial.strip():
                    await conn.on_line(eof.partial)
                break
            except asyncio.LimitOverrunError:
                await _skip_line(reader)
                too_long = McpError(
                    PARSE_ERROR, f"Parse error: line exceeds {max_line_bytes} bytes"
                )
                await conn.send(error_message(None, too_long))
                continue
            if len(line) > max_line_bytes:
                too_long = McpError(
                    PARSE_ERROR, f"Parse error: line exceeds {max_line_bytes} bytes"
                )
                await conn.send(error_message(None, too_long))
                continue
            if line.strip():
                await conn.on_line(line)
    finally:
        unsubscribe()
        await conn.close()


async def _skip_line(reader: asyncio.StreamReader) -> None:
    """Discard input up to and including the next newline."""
    while True:
        try:
            await reader.readuntil(b"\n")
            return
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)
        except asyncio.IncompleteReadError:
            return


async def stdio_streams(
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """This process's stdin/stdout as asyncio streams (for `vsmcp mcp-stdio`)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=max_line_bytes)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, sys.stdout
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer
