"""MCP over stdio: newline-delimited JSON-RPC on a reader/writer pair.

Speaks 2025-11-25 (`initialize`, `notifications/cancelled`, `notifications/{tools,
resources,prompts}/list_changed` after initialize, `resources/subscribe` /
`resources/unsubscribe` with `notifications/resources/updated`) and answers 2026-07-28
clients too (`server/discover`, requests carrying the `_meta` envelope,
`subscriptions/listen` with the list-changed flags and `resourceSubscriptions`, ended by
`notifications/cancelled` naming it). The connection is the session: its subscriptions
are kept as an HTTP session's are (`node.mcp.subscriptions`), a listen's as an HTTP
listen stream's (`node.mcp.listen`), and all end when the input does. The caller is the
local user: every call runs as `Caller("stdio", zone, "stdio")`.

Bounds: a line longer than `max_line_bytes` is answered with a parse error and
skipped; at most `max_inflight` calls run at once (more are refused as overloaded); at
most `max_listeners` listens are open at once (16, the node's default
`mcp.max_listeners_per_caller`: `vsmcp mcp-stdio` does not read the node's config); the
subscriptions of the connection and of each listen, and their pending updates, are
bounded as over HTTP.

With `confirm_subscriptions` (the bridge: `vsmcp mcp-stdio`) a subscription is answered
once the provider holds it at the node, or refused if it cannot be (or is not held within
`CONFIRM_TIMEOUT_S`, 30 s); a listen waits for that in a task of its own, the input read
meanwhile. One that ends for
good is told to the client: a `resources/subscribe` one as an `error` log line (unless
the client set a level above `error`), a listen's by the listen's end with an error
result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final

from vsmcp.node.mcp.client_requests import ClientState, declared, modern_state
from vsmcp.node.mcp.listen import (
    acknowledgement,
    ended,
    honored_flags,
    list_changed,
    listen_meta,
    too_many_listens,
)
from vsmcp.node.mcp.offers import LIST_CHANGED
from vsmcp.node.mcp.protocol import (
    INVALID_REQUEST,
    META_CLIENT_CAPABILITIES,
    META_PROTOCOL_VERSION,
    MODERN_VERSIONS,
    OVERLOADED,
    PARSE_ERROR,
    PROVIDER_ERROR,
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
from vsmcp.node.mcp.subscriptions import (
    CONFIRM_TIMEOUT_S,
    SUBSCRIPTION_METHODS,
    SessionUpdates,
    Subscriptions,
    declare_subscribe,
)
from vsmcp.node.tools.client_channel import level_rank
from vsmcp.node.tools.config import DEFAULT_MAX_LISTENERS_PER_CALLER
from vsmcp.node.tools.model import ToolCatalog

log = logging.getLogger(__name__)

DEFAULT_MAX_LINE_BYTES: Final = 1 << 20
DEFAULT_MAX_INFLIGHT: Final = 64
STDIO_OWNER: Final = "stdio"
LOG_METHOD: Final = "notifications/message"


@dataclass(eq=False)
class _Listen:
    """One open `subscriptions/listen`: its request, flags and resource subscriptions."""

    message: Message
    flags: list[str]
    updates: SessionUpdates
    subscriptions: Subscriptions


class _StdioConnection:
    def __init__(
        self,
        catalog: ToolCatalog,
        writer: asyncio.StreamWriter,
        caller: Caller,
        max_inflight: int,
        max_listeners: int,
        confirm: bool,
        confirm_timeout_s: float,
    ) -> None:
        self.core = McpCore(catalog)
        self.confirm = confirm
        self.confirm_timeout_s = confirm_timeout_s
        self.writer = writer
        self.caller = caller
        self.max_inflight = max_inflight
        self.max_listeners = max_listeners
        self.inflight: dict[Any, asyncio.Task[None]] = {}
        # Listens not acknowledged yet (their subscriptions being held): in `inflight`,
        # and counted with the open ones against `max_listeners`.
        self.opening: set[Any] = set()
        self.lock = asyncio.Lock()
        self.initialized = False
        # Open listens by request id (2026-07-28).
        self.listens: dict[Any, _Listen] = {}
        # The client's capabilities (from initialize) and log level (logging/setLevel).
        self.client = ClientState(STDIO_OWNER, frozenset())
        # The connection's own resource subscriptions (2025-11-25 `resources/subscribe`).
        self.updates = SessionUpdates(self._updated)
        self.subscriptions = Subscriptions(
            self.core,
            caller,
            self.updates,
            STDIO_OWNER,
            confirm=confirm,
            confirm_timeout_s=confirm_timeout_s,
            on_end=self._subscription_ended,
        )
        self._flushing: asyncio.Task[None] | None = None
        # Every background task of the connection (sends, flushes, ends of listens):
        # cancelled and awaited at close.
        self._tasks: set[asyncio.Task[None]] = set()

    async def send(self, message: dict[str, Any]) -> None:
        async with self.lock:
            self.writer.write(encode(message) + b"\n")
            await self.writer.drain()

    def _spawn(self, work: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=f"mcp-stdio:{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    def _send_soon(self, messages: list[dict[str, Any]], what: str) -> None:
        async def send_all() -> None:
            for message in messages:
                await self.send(message)

        if messages:
            self._spawn(send_all(), what)

    def tools_changed(self) -> None:
        messages: list[dict[str, Any]] = []
        if self.initialized:
            messages.extend(notification(method) for method in LIST_CHANGED)
        for listen in self.listens.values():
            messages.extend(list_changed(listen.message, listen.flags))
        self._send_soon(messages, "list-changed")

    def _updated(self) -> None:
        """A subscription brought an update: write the pending ones (one writer at a time)."""
        if self._flushing is None or self._flushing.done():
            self._flushing = self._spawn(self._flush(), "updates")

    async def _flush(self) -> None:
        # Updates arriving while this one writes are taken by its next round.
        while self.updates.pending or any(lsn.updates.pending for lsn in self.listens.values()):
            await self.updates.send(self.send)
            for listen in list(self.listens.values()):
                await listen.updates.send(self.send, listen_meta(listen.message))

    def _subscription_ended(self, uri: str, why: str) -> None:
        """A `resources/subscribe` subscription ended for good: an `error` log line tells
        the client (it has no other way to learn it), unless it asked for less."""
        level = self.client.log_level
        if level is not None and (level_rank(level) or 0) > (level_rank("error") or 0):
            return
        data = {"event": "subscription_ended", "uri": uri, "error": why}
        params = {"level": "error", "logger": "vsmcp", "data": data}
        self._send_soon([notification(LOG_METHOD, params)], "subscription-ended")

    def _listen_ended(self, listen_id: Any, uri: str, why: str) -> None:
        """A listen's subscription ended for good: so does the listen, with an error."""
        listen = self.listens.pop(listen_id, None)
        if listen is None:
            return  # not acknowledged yet (its request is refused), or over already
        error = McpError(
            PROVIDER_ERROR,
            f"Subscription to {uri[:128]!r} ended: {why}",
            {"uri": uri, "reason": "subscription_failed"},
        )

        async def end() -> None:
            await listen.subscriptions.close()
            await self.send(error_message(listen_id, error))

        self._spawn(end(), "listen-ended")

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
                self._cancel(message.params.get("requestId"))
            return
        method = message.method
        modern = message.meta.get(META_PROTOCOL_VERSION) in MODERN_VERSIONS
        if method == "initialize":
            self.initialized = True
            self.client.capabilities = declared(message.params.get("capabilities"))
            result = declare_subscribe(self.core.initialize_result(message.params))
            await self.send(result_message(message.id, result))
        elif method == "server/discover":
            await self.send(
                result_message(message.id, declare_subscribe(self.core.discover_result()))
            )
        elif method == "subscriptions/listen":
            await self._listen(message)
        elif message.id in self.inflight or message.id in self.listens:
            await self._duplicate()
        elif method in SUBSCRIPTION_METHODS and not modern and not self.initialized:
            # As over HTTP, where a 2025-11-25 request needs the session initialize made.
            early = McpError(INVALID_REQUEST, f"Bad request: {method} before initialize")
            await self.send(error_message(message.id, early))
        elif len(self.inflight) >= self.max_inflight:
            busy = McpError(
                OVERLOADED, "Too many calls in flight", {"limit": "inflight", "retry_after_s": 0.1}
            )
            await self.send(error_message(message.id, busy))
        else:
            self.inflight[message.id] = asyncio.create_task(
                self._call(message), name=f"mcp-stdio:call:{message.id}"
            )

    async def _duplicate(self) -> None:
        """A request reusing the id of one still open: refused with no id (`null`), since
        an error with that id would answer (and end) the open one at the client."""
        await self.send(error_message(None, McpError(INVALID_REQUEST, "Duplicate request id")))

    def _cancel(self, request_id: Any) -> None:
        """`notifications/cancelled`: a call stops (answered -32800, Request cancelled); a
        listen ends with its subscriptions, unanswered (its client is done with it)."""
        if not isinstance(request_id, str | int):
            return  # names no request of ours (and may not even be hashable)
        task = self.inflight.get(request_id)
        if task is not None:
            task.cancel()
        listen = self.listens.pop(request_id, None)
        if listen is not None:
            self._spawn(listen.subscriptions.close(), "listen-cancelled")

    async def _listen(self, message: Message) -> None:
        """Start a `subscriptions/listen` in a task of its own (in `inflight`, so that
        `notifications/cancelled` reaches it): holding its subscriptions may take a while,
        and the input goes on being read meanwhile."""
        if message.id in self.listens or message.id in self.inflight:
            await self._duplicate()
            return
        if len(self.listens) + len(self.opening) >= self.max_listeners:
            await self.send(error_message(message.id, too_many_listens()))
            return
        self.opening.add(message.id)
        self.inflight[message.id] = asyncio.create_task(
            self._open_listen(message), name=f"mcp-stdio:listen:{str(message.id)[:16]}"
        )

    async def _open_listen(self, message: Message) -> None:
        updates = SessionUpdates(self._updated)
        name = f"{STDIO_OWNER}-listen-{str(message.id)[:16]}"
        subscriptions = Subscriptions(
            self.core,
            self.caller,
            updates,
            name,
            confirm=self.confirm,
            confirm_timeout_s=self.confirm_timeout_s,
            on_end=lambda uri, why: self._listen_ended(message.id, uri, why),
        )
        listen = _Listen(message, honored_flags(message), updates, subscriptions)
        try:
            uris = await listen.subscriptions.listen(message)
        except asyncio.CancelledError:
            # Cancelled by its client (left unanswered, as an open listen's cancellation
            # is) or the input ended: its subscriptions end with it.
            await listen.subscriptions.close()
            raise
        except Exception as exc:  # noqa: BLE001 - top-level handler; error_message logs the unexpected
            await listen.subscriptions.close()
            with contextlib.suppress(ConnectionError):
                await self.send(error_message(message.id, exc))
            return
        finally:
            self.inflight.pop(message.id, None)
            self.opening.discard(message.id)
        # Registered before its acknowledgement is sent, so no list change is missed
        # meanwhile; and with nothing awaited in between, the acknowledgement takes the
        # writer's lock first: what the listen brings is written after it.
        self.listens[message.id] = listen
        await self.send(acknowledgement(message, listen.flags, uris))
        if updates.pending:
            self._updated()

    async def _call(self, message: Message) -> None:
        modern = message.meta.get(META_PROTOCOL_VERSION) in MODERN_VERSIONS
        try:
            if message.method in SUBSCRIPTION_METHODS and not modern:
                result = await self.subscriptions.handle(message)
            else:
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
        """The input ended: calls are cancelled, subscriptions end, listens end gracefully."""
        listens = list(self.listens.values())
        self.listens.clear()
        tasks: list[asyncio.Task[Any]] = self.subscriptions.cancel()
        for listen in listens:
            tasks += listen.subscriptions.cancel()
        tasks += self.inflight.values()
        tasks += self._tasks
        for task in tasks:
            task.cancel()
        if tasks:
            # Waited for, not awaited: their outcomes are theirs (a cancellation of this
            # close itself still reaches it).
            await asyncio.wait(tasks)
        for listen in listens:
            with contextlib.suppress(ConnectionError):
                await self.send(ended(listen.message))


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
    max_listeners: int = DEFAULT_MAX_LISTENERS_PER_CALLER,
    confirm_subscriptions: bool = False,
    confirm_timeout_s: float = CONFIRM_TIMEOUT_S,
) -> None:
    """Serve one MCP client on `reader`/`writer` until end of input; then cancel its
    calls and end its subscriptions. `confirm_subscriptions`: the catalog's provider
    says when it holds a subscription (`HELD_METHOD`: the bridge does), and a subscribe
    is answered only then, or refused after `confirm_timeout_s`."""
    caller = Caller(caller_id, zone, "stdio")
    conn = _StdioConnection(
        catalog,
        writer,
        caller,
        max_inflight,
        max_listeners,
        confirm_subscriptions,
        confirm_timeout_s,
    )
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
