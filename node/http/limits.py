"""Connection limits and read timeouts of the node's HTTP server.

aiohttp bounds a request head's size (`max_line_size`, `max_field_size`, `max_headers`)
but not how many connections are open, nor how long a client may take to send one.
Half-sent requests left open exhaust descriptors until `/healthz` fails. Here:

- **Head timeout**: a connection must complete a request head within `head_timeout_s`
  of opening or of its previous response (aiohttp's keep-alive timer, armed at accept
  and not reset by incoming bytes, does exactly that); an idle keep-alive connection
  is closed after the same time.
- **Body idle timeout**: while a handler runs, a request body that is not complete and
  receives no byte for `body_idle_timeout_s` closes the connection.
- **Connection cap**: at most `max_connections` connections, plus `RESERVED_CONNECTIONS`
  more that serve only the operational endpoints (`/healthz`, `/metrics`, `/api/*`),
  one request each, so health checks and operators get through a flood.
- **Per-client cap**: at most `max_per_client` connections from one address.
- **Eviction**: at the cap, the connection waiting longest for a request head (idle
  keep-alive or half-sent) is closed to admit a new one, so connections that send
  nothing cannot keep anyone out; only requests being served hold their slots.

A refused connection gets a canned 503 and is closed at once. A request head over
aiohttp's limits gets 431 and one rate-limited log line instead of a traceback.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Final, cast

from aiohttp import http_exceptions, web
from aiohttp.streams import StreamReader
from aiohttp.web_request import BaseRequest

from vsmcp.mesh.addrinfo import bound_stream_socket, numeric_addrinfo
from vsmcp.node.app.config import (
    DEFAULT_BODY_IDLE_TIMEOUT_S,
    DEFAULT_HEAD_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
)

log = logging.getLogger(__name__)

# Connections past the cap that may still reach the operational endpoints.
RESERVED_CONNECTIONS: Final = 16
# A whole request head at most. aiohttp caps each line (8 KiB) and the number of
# headers (128), so a head could otherwise hold about 1 MiB (2 MiB of memory) per
# connection while it trickles in; nginx allows 32 KiB by default.
MAX_REQUEST_HEAD_BYTES: Final = 64 * 1024
# How long a connection refused with 431 is still read (and dropped) before it closes.
LINGER_S: Final = 2.0
RESERVED_PATH_PREFIXES: Final = ("/healthz", "/metrics", "/api/")
# A flood of bad clients costs one log line per kind per interval, not one per request.
CLIENT_ERROR_LOG_INTERVAL_S: Final = 10.0
REFUSE_REASONS: Final = (
    "total",
    "per_client",
    "reserved_only",
    "body_idle",
    "evicted_waiting",
    "head_too_large",
)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT
    reserved: int = RESERVED_CONNECTIONS
    head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S
    body_idle_timeout_s: float = DEFAULT_BODY_IDLE_TIMEOUT_S


class _Throttled:
    """Log one line per `interval_s` at most, saying how many were left out."""

    def __init__(self, interval_s: float = CLIENT_ERROR_LOG_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._last = -interval_s
        self._suppressed = 0

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self._interval_s:
            self._suppressed += 1
            return
        suppressed, self._suppressed, self._last = self._suppressed, 0, now
        if suppressed:
            message += f" (and {suppressed} more in the last {self._interval_s:.0f} s)"
        log.warning(message, *args)


def _refusal(reason: str) -> bytes:
    body = b'{"error":"too many connections","limit":"' + reason.encode() + b'"}'
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_HEAD_TOO_LARGE: Final = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"Content-Type: text/plain\r\nConnection: close\r\nContent-Length: 31\r\n\r\n"
    b"Request Header Fields Too Large"
)


def _client_of(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")


class Admission(enum.Enum):
    NORMAL = "normal"
    RESERVED = "reserved"  # past the cap: the operational endpoints only
    REFUSED_TOTAL = "total"
    REFUSED_PER_CLIENT = "per_client"

    @property
    def refused(self) -> bool:
        return self in (Admission.REFUSED_TOTAL, Admission.REFUSED_PER_CLIENT)


class ConnectionGuard:
    """Counts open connections, in all and per client address, and admits or refuses.

    When the cap is reached, the connection that has waited longest for a request head
    (idle keep-alive or half-sent) is closed to make room: a flood of connections that
    send nothing cannot keep anyone out; only requests being served hold their slots."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self.reserved_open = 0
        self.per_client: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        # Connections waiting for a request head, longest-waiting first.
        self._waiting: OrderedDict[GuardedRequestHandler, None] = OrderedDict()
        self._refusal_log = _Throttled()
        self._error_log = _Throttled()

    def admit(self, conn: GuardedRequestHandler) -> Admission:
        limits = self.limits
        client = conn.client
        if self.per_client[client] >= limits.max_per_client:
            return self._refuse(Admission.REFUSED_PER_CLIENT, client)
        if self.open >= limits.max_connections and self._waiting:
            oldest, _ = self._waiting.popitem(last=False)
            self.refused["evicted_waiting"] += 1
            oldest.evict()
        if self.open >= limits.max_connections + limits.reserved:
            return self._refuse(Admission.REFUSED_TOTAL, client)
        reserved = self.open >= limits.max_connections
        self.open += 1
        self.reserved_open += reserved
        self.per_client[client] += 1
        self._waiting[conn] = None
        return Admission.RESERVED if reserved else Admission.NORMAL

    def release(self, conn: GuardedRequestHandler) -> None:
        self._waiting.pop(conn, None)
        self.open -= 1
        self.reserved_open -= conn.reserved
        self.per_client[conn.client] -= 1
        if self.per_client[conn.client] <= 0:
            del self.per_client[conn.client]

    def serving(self, conn: GuardedRequestHandler) -> None:
        """`conn` has a request head parsed: its slot is no longer up for eviction."""
        self._waiting.pop(conn, None)

    def waiting(self, conn: GuardedRequestHandler) -> None:
        """`conn` answered its request and waits for the next one."""
        self._waiting[conn] = None

    def _refuse(self, admission: Admission, client: str) -> Admission:
        self.refused[admission.value] += 1
        self._refusal_log.warning(
            "HTTP: refused a connection from %s (%s limit; %d open)",
            client,
            admission.value,
            self.open,
        )
        return admission

    def counted(self, reason: str) -> None:
        self.refused[reason] += 1

    def client_error(self, client: str, status: int, detail: object) -> None:
        self._error_log.warning("HTTP: %d for a bad request from %s: %s", status, client, detail)

    def connection_counts(self) -> dict[str, int]:
        return {"open": self.open, "reserved": self.reserved_open}


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, admitted by a `ConnectionGuard` and watched for
    idle request bodies."""

    def __init__(self, manager: Any, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, keepalive_timeout=guard.limits.head_timeout_s, **kwargs)
        self._guard = guard
        self.client = ""
        self._admission: Admission | None = None  # set on accept, cleared once released
        self._last_data = 0.0
        self._body: StreamReader | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # of the request head being received
        self._discarding = False  # refused: what arrives is dropped until we close
        self._no_head_yet = True

    @property
    def reserved(self) -> bool:
        return self._admission is Admission.RESERVED

    def refuse_request(self) -> web.Response:
        """The answer to a request a reserved connection may not make."""
        self._guard.counted("reserved_only")
        refused = web.json_response(
            {"error": "too many connections", "limit": "connections"},
            status=503,
            headers={"Retry-After": "1"},
        )
        refused.force_close()
        return refused

    def evict(self) -> None:
        """Give up this connection's slot now and close it (to make room for another)."""
        self._release()
        self.force_close()

    def _release(self) -> None:
        if self._admission is not None and not self._admission.refused:
            self._guard.release(self)
        self._admission = None

    def request_started(self, body: StreamReader) -> None:
        self._guard.serving(self)
        self.watch_body(body)

    def request_finished(self) -> None:
        self.watch_body(None)
        if self._admission is not None and not self._admission.refused:
            self._guard.waiting(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = _client_of(transport)
        admission = self._admission = self._guard.admit(self)
        super().connection_made(transport)
        if admission.refused:
            cast(asyncio.Transport, transport).write(_refusal(admission.value))
            self.force_close()  # the buffered refusal is flushed before the close

    def connection_lost(self, exc: BaseException | None) -> None:
        self._release()
        self.watch_body(None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._last_data = self._loop.time()
        # Bytes are a request head's while aiohttp has parsed none that waits (`_messages`)
        # and either none came yet or it waits for the next (`_waiter`, which its
        # keep-alive timer tests too); there is no public hook for either.
        waiting = not self._messages and (
            self._no_head_yet or (self._waiter is not None and not self._waiter.done())
        )
        super().data_received(data)
        if self._messages:
            self._no_head_yet = False
        if not waiting or self._messages:
            self._head_bytes = 0  # a head is complete, or a request is being handled
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_REQUEST_HEAD_BYTES:
            self._refuse_head()

    def _refuse_head(self) -> None:
        """Answer 431 and close, reading (and dropping) what the client still sends for
        a moment: closing with unread bytes would reset the connection, and the client
        would lose the answer."""
        self._guard.counted("head_too_large")
        self._guard.client_error(self.client, 431, "request head too large")
        self._discarding = True
        transport = self.transport
        if transport is not None:
            transport.write(_HEAD_TOO_LARGE)
            if transport.can_write_eof():
                transport.write_eof()
        self._loop.call_later(LINGER_S, self.force_close)

    def watch_body(self, body: StreamReader | None) -> None:
        """Close the connection if `body` (the request being handled) stays incomplete
        with no byte arriving for the body idle timeout; None stops watching."""
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._body = body
        if body is not None and not body.is_eof():
            self._last_data = self._loop.time()
            self._arm_body_timer()

    def _arm_body_timer(self) -> None:
        at = self._last_data + self._guard.limits.body_idle_timeout_s
        self._body_timer = self._loop.call_at(at, self._check_body)

    def _check_body(self) -> None:
        self._body_timer = None
        body = self._body
        if body is None or body.is_eof() or self.transport is None:
            return
        idle_s = self._loop.time() - self._last_data
        if idle_s < self._guard.limits.body_idle_timeout_s:
            self._arm_body_timer()  # bytes arrived since: check again later
            return
        self._guard.counted("body_idle")
        self._guard.client_error(self.client, 408, TimeoutError("request body idle"))
        self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp could not parse: a short answer and one throttled log line
        (aiohttp logs a traceback for each); a head over the size limits gets 431."""
        if not isinstance(exc, http_exceptions.HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, http_exceptions.LineTooLong) or "Too many headers" in str(exc):
            status, text = 431, "Request Header Fields Too Large"
        else:
            status, text = 400, "Bad Request"
        self._guard.client_error(self.client, status, _one_line(exc))
        response = web.Response(status=status, text=text)
        response.force_close()
        return response


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:200] + "…"


def reserved_path(path: str) -> bool:
    return path.startswith(RESERVED_PATH_PREFIXES)


@web.middleware
async def connection_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Reserved connections serve the operational endpoints, one request each; every
    request's body is watched for idleness while its handler runs."""
    conn = request.protocol
    if not isinstance(conn, GuardedRequestHandler):
        response: web.StreamResponse = await handler(request)
        return response
    if conn.reserved and not reserved_path(request.path):
        return conn.refuse_request()
    conn.request_started(request.content)
    try:
        response = await handler(request)
    finally:
        conn.request_finished()
    if conn.reserved:
        response.force_close()
    return response


class GuardedTCPSite(web.BaseSite):
    """`web.TCPSite` whose connections are `GuardedRequestHandler`s of one guard."""

    __slots__ = ("_guard", "_handler_args", "_host", "_listening", "_port")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        **handler_args: Any,
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._guard = guard
        self._handler_args = handler_args
        self._listening: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def sockets(self) -> list[Any]:
        return list(self._listening.sockets) if self._listening is not None else []

    async def start(self) -> None:
        await super().start()
        manager = self._runner.server
        assert manager is not None
        loop = asyncio.get_running_loop()

        def factory() -> GuardedRequestHandler:
            return GuardedRequestHandler(
                manager, guard=self._guard, loop=loop, **self._handler_args
            )

        infos = numeric_addrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        if infos is not None and len(infos) == 1:
            # An IP literal: bound here, so no resolver thread starts (mesh/addrinfo.py).
            sock = bound_stream_socket(infos[0])
            try:
                listening = await loop.create_server(factory, sock=sock)
            except BaseException:
                sock.close()
                raise
        else:
            listening = await loop.create_server(
                factory, self._host, self._port, reuse_address=True
            )
        self._server = self._listening = listening
