"""MCP Streamable HTTP at `/mcp` (aiohttp), for both protocol generations.

- **2026-07-28** (SDK `mode="auto"`): stateless. Every POST carries
  `MCP-Protocol-Version: 2026-07-28`, `Mcp-Method` (and `Mcp-Name` for `tools/call`)
  headers matching the body, and `params._meta` with the protocol version and client
  capabilities. `server/discover` answers the versions and capabilities. Closing the
  response stream cancels the call. `subscriptions/listen` opens an SSE stream that
  carries the list-changed notifications it asks for and `notifications/resources/updated`
  of its `resourceSubscriptions` (held as a session's are, `node.mcp.subscriptions`).
- **2025-11-25** (SDK `mode="legacy"`): `initialize` creates a session
  (`Mcp-Session-Id`); later requests name it. `notifications/cancelled` cancels a
  running call; GET opens the session's SSE stream (list-changed notifications);
  DELETE ends the session.

A response is JSON unless the call emits a notification (progress) and the client
accepts `text/event-stream`: then it switches to SSE, progress first, result last.

Security (DNS rebinding, foreign Origins): the app's one Host/Origin policy for every
route, `node.http_policy.RequestPolicy`, answers before this gateway does.
`Authorization: Bearer <token>` maps to a zone; a loopback peer without a token gets
`loopback_zone` (`None`: refused with 401); anyone else without a valid token: 401.
Bounds: body size, sessions and listen streams in all and per caller (a token's
name, or an anonymous client's address), session idle expiry (swept on requests). A
caller at its session quota gives up its own oldest idle session; when all sessions are
taken, a newcomer takes the oldest idle session of the caller holding the most, never
of one holding as few as itself, so one caller cannot lock out or evict the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import ipaddress
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from vsmcp.node.errors import clip
from vsmcp.node.mcp.client_requests import ClientState, Notify, declared, modern_state
from vsmcp.node.mcp.input_rounds import InputRounds, RoundsError
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
    HANDSHAKE_VERSIONS,
    HEADER_MISMATCH,
    HTTP_STATUS,
    INVALID_PARAMS,
    INVALID_REQUEST,
    META_CLIENT_CAPABILITIES,
    META_PROTOCOL_VERSION,
    MODERN_VERSIONS,
    NOT_ACCEPTABLE,
    OVERLOADED,
    REQUEST_CANCELLED,
    SESSION_NOT_FOUND,
    TOO_LARGE,
    UNAUTHORIZED,
    UNSUPPORTED_MEDIA_TYPE,
    UNSUPPORTED_PROTOCOL_VERSION,
    Caller,
    McpCore,
    McpError,
    Message,
    decode,
    encode,
    error_message,
    error_object,
    notification,
    result_message,
)
from vsmcp.node.tools.config import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_LISTENERS,
    DEFAULT_MAX_LISTENERS_PER_CALLER,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_SESSIONS_PER_CALLER,
    DEFAULT_SESSION_IDLE_S,
)
from vsmcp.node.tools.model import ToolCatalog
from vsmcp.node.vsm.priority import DEFAULT_PRIORITY, Priority

if TYPE_CHECKING:
    from vsmcp.node.mcp.subscriptions import SessionUpdates, Subscriptions

log = logging.getLogger(__name__)

MCP_PATH: Final = "/mcp"
SSE_KEEPALIVE_S: Final = 15.0
SWEEP_INTERVAL_S: Final = 1.0
SERVICE_UNAVAILABLE: Final = 503  # what a refusal for load is answered with

JSON_TYPE: Final = "application/json"
SSE_TYPE: Final = "text/event-stream"
H_SESSION: Final = "Mcp-Session-Id"
H_VERSION: Final = "MCP-Protocol-Version"
H_METHOD: Final = "Mcp-Method"
H_NAME: Final = "Mcp-Name"


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What a bearer token grants: a zone, and a name used in the caller's origin."""

    zone: str
    name: str
    # The highest priority class its calls may ask for (`mcp.tokens[].max_priority`).
    max_priority: Priority = DEFAULT_PRIORITY


@dataclass(eq=False)
class _Session:
    id: str
    caller: Caller
    owner: str  # whose quota it counts against (`_owner`)
    protocol_version: str
    last_seen: float
    inflight: dict[Any, asyncio.Task[dict[str, Any]]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    stream_open: bool = False
    closed: bool = False
    # Its capabilities and log level (server-to-client requests, logs).
    client: ClientState | None = None
    # Set with `changed` when the mesh's lists changed (else only updates are new).
    list_changed: bool = False
    # Its resource subscriptions and the updates they brought (`node.mcp.subscriptions`).
    subscriptions: Subscriptions | None = None
    updates: SessionUpdates | None = None


@dataclass(eq=False)
class _Listener:
    owner: str
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Set with `changed` when the mesh's lists changed (else only updates are new).
    list_changed: bool = False
    # A listen stream's resource subscriptions (`resourceSubscriptions`) and their updates.
    subscriptions: Subscriptions | None = None
    updates: SessionUpdates | None = None


@functools.lru_cache(maxsize=1024)  # peer addresses repeat; parsing one costs ≈5 µs
def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=128)  # clients send the same few Accept values on every call
def _accepts(accept: str, media_type: str) -> bool:
    """Whether an Accept value takes `media_type` (RFC 9110 12.5.1): the most specific
    matching range (`type/sub`, `type/*`, `*/*`) decides, and q=0 means "not this"."""
    kind = media_type.split("/", 1)[0]
    ranks = {media_type: 2, f"{kind}/*": 1, "*/*": 0}
    best_rank, best_q = -1, 0.0
    for item in accept.split(","):
        media_range, *params = (part.strip() for part in item.split(";"))
        rank = ranks.get(media_range.lower(), -1)
        if rank <= best_rank:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best_rank, best_q = rank, q
    return best_q > 0


def _check_accept(request: web.Request, *media_types: str) -> None:
    """Streamable HTTP: a POST must accept JSON and SSE, a GET SSE; else 406."""
    accept = request.headers.get("Accept", "")
    if not all(_accepts(accept, media_type) for media_type in media_types):
        raise McpError(
            NOT_ACCEPTABLE,
            f"Not Acceptable: the Accept header must take {' and '.join(media_types)}",
            {"accept": clip(accept)},
        )


def _owner(request: web.Request, caller: Caller) -> str:
    """Whose quotas a request counts against: a token's name, or an anonymous client's
    address (all anonymous local clients share 127.0.0.1's)."""
    if caller.caller_id.startswith("token:"):
        return caller.caller_id
    return f"addr:{request.remote or ''}"


def _idle(session: _Session) -> bool:
    return not session.inflight and not session.stream_open


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _error_headers(err: Mapping[str, Any], status: int) -> dict[str, str]:
    """HTTP headers an error response carries: Retry-After, WWW-Authenticate."""
    headers: dict[str, str] = {}
    data = err.get("data")
    retry = data.get("retry_after_s") if isinstance(data, dict) else None
    if isinstance(retry, int | float) and status in (429, 503):
        headers["Retry-After"] = str(max(1, int(retry + 0.999)))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="vsmcp"'
    return headers


def json_error(exc: BaseException, request_id: Any = None, headers: Any = None) -> web.Response:
    err = error_object(exc)
    status = HTTP_STATUS.get(err["code"], 200)
    extra = {**dict(headers or {}), **_error_headers(err, status)}
    return web.Response(
        body=encode({"jsonrpc": "2.0", "id": request_id, "error": err}),
        status=status,
        content_type="application/json",
        headers=extra,
    )


def _sse(message: Mapping[str, Any]) -> bytes:
    return b"event: message\ndata: " + encode(message) + b"\n\n"


async def _write_sse(stream: web.StreamResponse, message: Mapping[str, Any]) -> None:
    await stream.write(_sse(message))


class _Reply:
    """One POST's response: JSON, or SSE from the first notification on (if accepted).

    A call still silent after `keepalive_s` switches to SSE and sends a comment every
    `keepalive_s`, so proxies and clients with read timeouts keep the stream open."""

    def __init__(
        self, request: web.Request, headers: Mapping[str, str], keepalive_s: float
    ) -> None:
        self._request = request
        self._headers = dict(headers)
        self._sse_ok = "text/event-stream" in request.headers.get("Accept", "")
        self._keepalive_s = keepalive_s
        self._timer: asyncio.TimerHandle | None = None
        self._beat: asyncio.Task[None] | None = None
        self._opening: asyncio.Lock | None = None
        self._answered = False
        self.stream: web.StreamResponse | None = None

    @property
    def streams(self) -> bool:
        """Whether this response can carry notifications and requests (SSE accepted)."""
        return self._sse_ok

    def keep_alive(self) -> None:
        """(Re)arm the keepalive timer, until the call is answered or abandoned."""
        if self._sse_ok and not self._answered:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._keepalive_s, self._start_beat)

    def abandon(self) -> None:
        """The call ended without an answer to send (the client left, or we stop)."""
        self._answered = True
        if self._timer is not None:
            self._timer.cancel()
        if self._beat is not None:
            self._beat.cancel()

    def _start_beat(self) -> None:
        self._beat = asyncio.create_task(self._send_keepalive(), name="mcp-keepalive")

    async def _send_keepalive(self) -> None:
        with contextlib.suppress(ConnectionError):
            stream = await self._open()
            await stream.write(b": keepalive\n\n")
            self.keep_alive()

    def _lock(self) -> asyncio.Lock:
        if self._opening is None:
            self._opening = asyncio.Lock()
        return self._opening

    async def _open(self) -> web.StreamResponse:
        if self._answered:
            raise ConnectionError("the call's reply is finished")
        if self.stream is not None:
            return self.stream
        # A notification and a keepalive may both open the stream: only one prepares it.
        async with self._lock():
            if self._answered:
                # finish() took the lock first: a second response must not follow it.
                raise ConnectionError("the call's reply is finished")
            if self.stream is None:
                stream = web.StreamResponse(
                    status=200,
                    headers={
                        **self._headers,
                        "Content-Type": "text/event-stream",
                        "Cache-Control": "no-cache, no-transform",
                        "X-Accel-Buffering": "no",
                    },
                )
                await stream.prepare(self._request)
                self.stream = stream
        return self.stream

    async def notify(self, message: dict[str, Any]) -> None:
        """Write `message` on the stream; ConnectionError once the reply is finished (a
        late log or request of the call must not write after its result)."""
        if not self._sse_ok:
            if self._answered:
                raise ConnectionError("the call's reply is finished")
            return
        stream = await self._open()
        if self._answered:
            raise ConnectionError("the call's reply is finished")
        await stream.write(_sse(message))

    async def finish(self, message: dict[str, Any]) -> web.StreamResponse:
        self._answered = True
        if self._timer is not None:
            self._timer.cancel()
        if self._beat is not None:
            await self._beat  # let a keepalive in progress end: one writer at a time
        # A notification opening the stream now finishes preparing it first: the result
        # then goes on that stream, never as a second response on the connection.
        async with self._lock():
            pass
        if self.stream is not None:
            with contextlib.suppress(ConnectionError):
                await self.stream.write(_sse(message))
                await self.stream.write_eof()
            return self.stream
        status = 200
        headers = self._headers
        if "error" in message:
            status = HTTP_STATUS.get(message["error"]["code"], 200)
            headers = {**headers, **_error_headers(message["error"], status)}
        return web.Response(
            body=encode(message),
            status=status,
            content_type="application/json",
            headers=headers,
        )


class McpGateway:
    """The `/mcp` endpoint's state: sessions, listeners, auth. Built by `register_mcp_routes`."""

    def __init__(
        self,
        catalog: ToolCatalog,
        *,
        tokens: Mapping[str, str | TokenGrant],
        loopback_zone: str | None,
        loopback_max_priority: Priority = DEFAULT_PRIORITY,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        session_idle_s: float = DEFAULT_SESSION_IDLE_S,
        max_listeners: int = DEFAULT_MAX_LISTENERS,
        max_sessions_per_caller: int = DEFAULT_MAX_SESSIONS_PER_CALLER,
        max_listeners_per_caller: int = DEFAULT_MAX_LISTENERS_PER_CALLER,
        sse_keepalive_s: float = SSE_KEEPALIVE_S,
    ) -> None:
        self.core = McpCore(catalog)
        # 2026-07-28 calls waiting for their clients' input between rounds.
        self.rounds = InputRounds(self.core.client_requests)
        self.sse_keepalive_s = sse_keepalive_s
        self._grants: dict[bytes, TokenGrant] = {}
        for token, grant in tokens.items():
            if isinstance(grant, str):
                grant = TokenGrant(zone=grant, name="token-" + _digest(token).hex()[:8])
            self._grants[_digest(token)] = grant
        self._loopback_zone = loopback_zone
        self._loopback_max_priority = loopback_max_priority
        self.max_body_bytes = max_body_bytes
        self.max_sessions = max_sessions
        self.session_idle_s = session_idle_s
        self.max_listeners = max_listeners
        self.max_sessions_per_caller = max_sessions_per_caller
        self.max_listeners_per_caller = max_listeners_per_caller
        # Least recently used first.
        self.sessions: OrderedDict[str, _Session] = OrderedDict()
        self.sessions_of: Counter[str] = Counter()
        self._listeners: set[_Listener] = set()
        self.listeners_of: Counter[str] = Counter()
        self._last_sweep = 0.0
        self._closing = False
        self._unsubscribe = catalog.on_change(self._tools_changed)
        # Told how long each refusal for load (HTTP 503) took (the node's histogram).
        self.refusal_observer: Callable[[float], None] | None = None

    # -- shared --------------------------------------------------------------------------

    def _tools_changed(self) -> None:
        for session in self.sessions.values():
            session.list_changed = True
            session.changed.set()
        for listener in self._listeners:
            listener.list_changed = True
            listener.changed.set()

    async def close(self) -> None:
        """End every stream and cancel every running call (idempotent)."""
        if self._closing:
            return
        self._closing = True
        self._unsubscribe()
        await self.rounds.stop()
        for session in list(self.sessions.values()):
            self._drop_session(session)
        for listener in self._listeners:
            listener.changed.set()

    def _drop_session(self, session: _Session) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        self.sessions_of[session.owner] -= 1
        if self.sessions_of[session.owner] <= 0:
            del self.sessions_of[session.owner]
        self._end_session(session)

    def _end_session(self, session: _Session) -> None:
        session.closed = True
        session.changed.set()
        self.core.client_requests.cancel_owner(session.id)
        if session.subscriptions is not None:
            session.subscriptions.cancel()
        for task in session.inflight.values():
            task.cancel()

    def _authenticate(self, request: web.Request) -> Caller:
        auth = request.headers.get("Authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            grant = self._grants.get(_digest(token.strip())) if scheme.lower() == "bearer" else None
            if grant is None:
                raise McpError(UNAUTHORIZED, "Unauthorized: unknown bearer token")
            return Caller(
                caller_id=f"token:{grant.name}",
                zone=grant.zone,
                origin=f"http:{grant.name}",
                addr=request.remote,
                max_priority=grant.max_priority,
            )
        if self._loopback_zone is not None and _is_loopback(request.remote):
            return Caller(
                caller_id="loopback",
                zone=self._loopback_zone,
                origin="http:loopback",
                addr=request.remote,
                max_priority=self._loopback_max_priority,
            )
        raise McpError(UNAUTHORIZED, "Unauthorized: a bearer token is required")

    def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep < SWEEP_INTERVAL_S:
            return
        self._last_sweep = now
        for session in list(self.sessions.values()):
            if now - session.last_seen > self.session_idle_s and not session.inflight:
                self._drop_session(session)

    def _too_large(self) -> McpError:
        return McpError(
            TOO_LARGE,
            f"Request body exceeds {self.max_body_bytes} bytes",
            {"max_bytes": self.max_body_bytes},
        )

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise self._too_large()
        if request.content_length is not None:  # within the cap (checked above): one read
            try:
                return await request.content.readexactly(request.content_length)
            except asyncio.IncompleteReadError as short:
                return short.partial  # the client hung up mid-body: not JSON, answered so
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body.extend(chunk)
            if len(body) > self.max_body_bytes:
                raise self._too_large()
        return bytes(body)

    # -- entry points ----------------------------------------------------------------------

    async def handle_post(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        response = await self._post(request)
        observe = self.refusal_observer
        if observe is not None and response.status == SERVICE_UNAVAILABLE:
            observe(time.perf_counter() - started)
        return response

    async def _post(self, request: web.Request) -> web.StreamResponse:
        try:
            _check_accept(request, JSON_TYPE, SSE_TYPE)
            if request.content_type != JSON_TYPE:
                raise McpError(
                    UNSUPPORTED_MEDIA_TYPE,
                    f"Unsupported Media Type: POST one JSON-RPC message as {JSON_TYPE}",
                    {"content_type": clip(request.headers.get("Content-Type", ""))},
                )
            caller = self._authenticate(request)
            self._sweep()
            message = decode(await self._read_body(request))
        except McpError as exc:
            return json_error(exc)
        if message.is_response:
            return self._client_answer(request, message, caller)
        version = request.headers.get(H_VERSION)
        try:
            if version in MODERN_VERSIONS:
                return await self._modern(request, message, caller, version)
            if version is not None and version not in HANDSHAKE_VERSIONS:
                raise McpError(
                    UNSUPPORTED_PROTOCOL_VERSION,
                    f"Unsupported protocol version {clip(version)!r}",
                    {
                        "supported": [*HANDSHAKE_VERSIONS, *MODERN_VERSIONS],
                        "requested": clip(version),
                    },
                )
            if message.method == "initialize":
                return self._initialize(message, caller, _owner(request, caller))
            return await self._legacy(request, message, caller)
        except McpError as exc:
            return json_error(exc, message.id)

    async def handle_get(self, request: web.Request) -> web.StreamResponse:
        try:
            caller = self._authenticate(request)
            if request.headers.get(H_VERSION) in MODERN_VERSIONS:
                return web.Response(status=405, headers={"Allow": "POST"})
            _check_accept(request, SSE_TYPE)
            session = self._session(request, caller)
            if session.stream_open:
                return web.Response(status=409, text="a stream is already open for this session")
            # A notification stream like a listen one: it counts against the same quotas.
            listener = self._open_listener(session.owner)
        except McpError as exc:
            return json_error(exc)
        session.stream_open = True
        try:
            stream = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    H_SESSION: session.id,
                }
            )
            await stream.prepare(request)
            while not session.closed and not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.changed.wait(), self.sse_keepalive_s)
                if session.closed or self._closing:
                    break
                if session.changed.is_set():
                    session.changed.clear()
                    if session.updates is not None:
                        await session.updates.send(functools.partial(_write_sse, stream))
                    if session.list_changed:
                        session.list_changed = False
                        for method in LIST_CHANGED:
                            await stream.write(_sse(notification(method)))
                else:
                    await stream.write(b": keepalive\n\n")
        except ConnectionError:
            pass
        finally:
            session.stream_open = False
            self._close_listener(listener)
        return stream

    async def handle_delete(self, request: web.Request) -> web.StreamResponse:
        try:
            caller = self._authenticate(request)
            session = self._session(request, caller)
        except McpError as exc:
            return json_error(exc)
        self._drop_session(session)
        return web.Response(status=200)

    # -- 2025-11-25: sessions ------------------------------------------------------------------

    def _initialize(self, message: Message, caller: Caller, owner: str) -> web.Response:
        if not message.is_request:
            raise McpError(INVALID_REQUEST, "initialize must be a request")
        self._make_room(owner)
        result = self.core.initialize_result(message.params)
        session_id = secrets.token_hex(16)
        session = _Session(
            id=session_id,
            caller=caller,
            owner=owner,
            protocol_version=result["protocolVersion"],
            last_seen=time.monotonic(),
            client=ClientState(session_id, declared(message.params.get("capabilities"))),
        )
        # Imported with the first session: an idle node has none.
        from vsmcp.node.mcp.subscriptions import SessionUpdates, Subscriptions, declare_subscribe

        session.updates = SessionUpdates(session.changed.set)
        session.subscriptions = Subscriptions(self.core, caller, session.updates, session_id[:8])
        declare_subscribe(result)
        self.sessions[session.id] = session
        self.sessions_of[owner] += 1
        return web.Response(
            body=encode(result_message(message.id, result)),
            content_type="application/json",
            headers={H_SESSION: session.id},
        )

    def _make_room(self, owner: str) -> None:
        """Make room for one more session of `owner`, or raise OVERLOADED."""
        mine = self.sessions_of[owner]
        if mine < self.max_sessions_per_caller and len(self.sessions) < self.max_sessions:
            return
        victim = next((s for s in self.sessions.values() if s.owner == owner and _idle(s)), None)
        if victim is None and mine < self.max_sessions_per_caller:
            # All taken, none of ours idle: the caller holding the most gives one up, if
            # it holds more than we will.
            heaviest, held = max(self.sessions_of.items(), key=lambda item: item[1])
            if held > mine + 1:
                victim = next(
                    (s for s in self.sessions.values() if s.owner == heaviest and _idle(s)), None
                )
        if victim is None:
            per_caller = mine >= self.max_sessions_per_caller
            raise McpError(
                OVERLOADED,
                "Too many sessions" + (" for this caller" if per_caller else ""),
                {
                    "limit": "sessions_per_caller" if per_caller else "sessions",
                    "retry_after_s": 1.0,
                },
            )
        self._drop_session(victim)

    def _session(self, request: web.Request, caller: Caller) -> _Session:
        sid = request.headers.get(H_SESSION)
        if sid is None:
            raise McpError(
                INVALID_REQUEST,
                f"Bad request: no {H_SESSION} header (2025-11-25) and no "
                f"{H_VERSION}: {MODERN_VERSIONS[-1]} (2026-07-28)",
            )
        session = self.sessions.get(sid)
        # Another caller's session id is answered as unknown: ids are not capabilities.
        if session is None or session.caller != caller:
            raise McpError(SESSION_NOT_FOUND, "Session not found or expired; initialize again")
        session.last_seen = time.monotonic()
        self.sessions.move_to_end(sid)
        return session

    async def _legacy(
        self, request: web.Request, message: Message, caller: Caller
    ) -> web.StreamResponse:
        session = self._session(request, caller)
        if message.is_notification:
            if message.method == "notifications/cancelled":
                task = session.inflight.get(message.params.get("requestId"))
                if task is not None:
                    task.cancel()
            return web.Response(status=202)
        reply = _Reply(request, {H_SESSION: session.id}, self.sse_keepalive_s)
        # Without SSE nothing but the answer can reach the client (progress, logs, asks).
        notify = reply.notify if reply.streams else None
        call: Coroutine[Any, Any, dict[str, Any]]
        subscriptions = session.subscriptions
        if subscriptions is not None and message.method in subscriptions.METHODS:
            call = subscriptions.handle(message)
        else:
            call = self.core.handle(
                message, caller, modern=False, notify=notify, client=session.client
            )
        task = asyncio.create_task(call, name=f"mcp-call:{session.id[:8]}:{message.id}")
        session.inflight[message.id] = task
        try:
            answer = await self._run(task, message, reply)
        finally:
            if session.inflight.get(message.id) is task:
                del session.inflight[message.id]
        return await reply.finish(answer)

    def _client_answer(
        self, request: web.Request, message: Message, caller: Caller
    ) -> web.StreamResponse:
        """A client's answer to a server-to-client request of a call in its session."""
        try:
            session = self._session(request, caller)
        except McpError as exc:
            return json_error(exc)
        self.core.client_requests.answer(session.id, message.raw)
        return web.Response(status=202)

    async def _run(
        self, call: Awaitable[dict[str, Any]], message: Message, reply: _Reply
    ) -> dict[str, Any]:
        """Await the call (keeping `reply`'s stream alive meanwhile) and return the reply
        message.

        A client that goes away cancels this handler (the runner's `handler_cancellation`)
        and, through the await, the call. A call cancelled on its own (a legacy
        `notifications/cancelled`) is answered as cancelled.
        """
        reply.keep_alive()
        try:
            result = await call
        except asyncio.CancelledError:
            handler = asyncio.current_task()
            if handler is not None and handler.cancelling():
                reply.abandon()
                raise  # the client is gone, or we are stopping
            return error_message(message.id, McpError(REQUEST_CANCELLED, "Request cancelled"))
        except Exception as exc:  # noqa: BLE001 - the call's exception-to-wire boundary
            return error_message(message.id, exc)
        return result_message(message.id, result)

    # -- 2026-07-28: stateless -------------------------------------------------------------------

    def _check_envelope(self, request: web.Request, message: Message, version: str) -> None:
        meta = message.meta
        missing = [k for k in (META_PROTOCOL_VERSION, META_CLIENT_CAPABILITIES) if k not in meta]
        if "_meta" not in message.params or missing:
            raise McpError(
                INVALID_PARAMS,
                f"params._meta must carry {META_PROTOCOL_VERSION!r} and "
                f"{META_CLIENT_CAPABILITIES!r}",
            )
        if meta[META_PROTOCOL_VERSION] != version:
            raise McpError(HEADER_MISMATCH, f"{H_VERSION} header does not match params._meta")
        if request.headers.get(H_METHOD) != message.method:
            raise McpError(HEADER_MISMATCH, f"{H_METHOD} header does not match the method")
        if message.method == "tools/call" and request.headers.get(H_NAME) != message.params.get(
            "name"
        ):
            raise McpError(HEADER_MISMATCH, f"{H_NAME} header does not match params.name")

    async def _modern(
        self, request: web.Request, message: Message, caller: Caller, version: str
    ) -> web.StreamResponse:
        if message.is_notification:
            return web.Response(status=202)  # cancellation is closing the stream at 2026-07-28
        self._check_envelope(request, message, version)
        if message.method == "server/discover":
            from vsmcp.node.mcp.subscriptions import declare_subscribe  # a first discover

            discovered = declare_subscribe(self.core.discover_result())
            return web.Response(
                body=encode(result_message(message.id, discovered)),
                content_type="application/json",
            )
        if message.method == "initialize":
            raise McpError(
                INVALID_REQUEST, f"initialize is not used at {version}; use server/discover"
            )
        if message.method == "subscriptions/listen":
            return await self._listen(request, message, caller)
        reply = _Reply(request, {}, self.sse_keepalive_s)
        client = modern_state(message.meta, message.meta.get(META_CLIENT_CAPABILITIES))
        notify = reply.notify if reply.streams else None
        if message.method == "tools/call" and client.capabilities:
            # Only a client that can be asked anything needs its call kept across rounds.
            call = self._call_in_rounds(message, caller, notify, client)
        else:
            call = self.core.handle(message, caller, modern=True, notify=notify, client=client)
        return await reply.finish(await self._run(call, message, reply))

    async def _call_in_rounds(
        self, message: Message, caller: Caller, notify: Notify | None, client: ClientState
    ) -> dict[str, Any]:
        """A 2026-07-28 `tools/call` whose provider may ask the client: `input_rounds`."""

        def start(to_client: Notify, state: ClientState) -> Coroutine[Any, Any, dict[str, Any]]:
            return self.core.handle(message, caller, modern=True, notify=to_client, client=state)

        try:
            return await self.rounds.call(
                caller, message.params, notify, client.capabilities, client.log_level, start
            )
        except RoundsError as e:
            raise McpError(
                INVALID_PARAMS, f"Invalid params: {e}", {"field": "requestState"}
            ) from None

    def _open_listener(self, owner: str) -> _Listener:
        """Count a notification stream (`subscriptions/listen`, or a session's GET)
        against its caller's and the node's quotas; `_close_listener` gives it back."""
        if self.listeners_of[owner] >= self.max_listeners_per_caller:
            raise too_many_listens()
        if len(self._listeners) >= self.max_listeners:
            raise McpError(
                OVERLOADED,
                "Too many open notification streams",
                {"limit": "listeners", "retry_after_s": 1.0},
            )
        listener = _Listener(owner)
        self._listeners.add(listener)
        self.listeners_of[owner] += 1
        return listener

    def _close_listener(self, listener: _Listener) -> None:
        self._listeners.discard(listener)
        self.listeners_of[listener.owner] -= 1
        if self.listeners_of[listener.owner] <= 0:
            del self.listeners_of[listener.owner]

    async def _listen(
        self, request: web.Request, message: Message, caller: Caller
    ) -> web.StreamResponse:
        from vsmcp.node.mcp.subscriptions import SessionUpdates, Subscriptions  # a first listen

        listener = self._open_listener(_owner(request, caller))
        listener.updates = SessionUpdates(listener.changed.set)
        name = f"listen-{secrets.token_hex(4)}"
        listener.subscriptions = Subscriptions(self.core, caller, listener.updates, name)
        try:
            honored = await listener.subscriptions.listen(message)
            return await self._stream_listen(request, message, listener, honored)
        finally:
            try:
                await listener.subscriptions.close()
            finally:
                # Even if this close is cancelled in turn: else the caller's slot is lost.
                self._close_listener(listener)

    async def _stream_listen(
        self, request: web.Request, message: Message, listener: _Listener, uris: list[str]
    ) -> web.StreamResponse:
        flags = honored_flags(message)
        stream = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await stream.prepare(request)
        try:
            await stream.write(_sse(acknowledgement(message, flags, uris)))
            while not self._closing:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(listener.changed.wait(), self.sse_keepalive_s)
                if self._closing:
                    break
                if listener.changed.is_set():
                    listener.changed.clear()
                    meta = listen_meta(message)
                    if listener.updates is not None:
                        await listener.updates.send(functools.partial(_write_sse, stream), meta)
                    if listener.list_changed:
                        listener.list_changed = False
                        for changed in list_changed(message, flags):
                            await stream.write(_sse(changed))
                else:
                    await stream.write(b": keepalive\n\n")
            # Graceful close: the listen request's result ends the stream.
            await stream.write(_sse(ended(message)))
            await stream.write_eof()
        except ConnectionError:
            pass
        return stream


def register_mcp_routes(
    app: web.Application,
    catalog: ToolCatalog,
    *,
    tokens: Mapping[str, str | TokenGrant],
    loopback_zone: str | None,
    loopback_max_priority: Priority = DEFAULT_PRIORITY,
    path: str = MCP_PATH,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
    session_idle_s: float = DEFAULT_SESSION_IDLE_S,
    max_listeners: int = DEFAULT_MAX_LISTENERS,
    max_sessions_per_caller: int = DEFAULT_MAX_SESSIONS_PER_CALLER,
    max_listeners_per_caller: int = DEFAULT_MAX_LISTENERS_PER_CALLER,
    sse_keepalive_s: float = SSE_KEEPALIVE_S,
) -> McpGateway:
    """Add POST/GET/DELETE `path` to `app`; the gateway is closed on app cleanup.

    Serve `app` with `node.http.app_runner` (handler cancellation on): a client that
    disconnects cancels its call only through it.

    `tokens` maps a bearer token to its zone (or to a `TokenGrant` with a name for
    the origin, `http:<name>`; a bare zone gets a name from the token's hash).
    """
    gateway = McpGateway(
        catalog,
        tokens=tokens,
        loopback_zone=loopback_zone,
        loopback_max_priority=loopback_max_priority,
        max_body_bytes=max_body_bytes,
        max_sessions=max_sessions,
        session_idle_s=session_idle_s,
        max_listeners=max_listeners,
        max_sessions_per_caller=max_sessions_per_caller,
        max_listeners_per_caller=max_listeners_per_caller,
        sse_keepalive_s=sse_keepalive_s,
    )
    app.router.add_post(path, gateway.handle_post)
    app.router.add_get(path, gateway.handle_get)
    app.router.add_delete(path, gateway.handle_delete)

    async def close(_: web.Application) -> None:
        await gateway.close()

    app.on_shutdown.append(close)
    return gateway
