"""MCP over JSON-RPC 2.0: message checks, method dispatch, and the ONE error mapping.

Both transports (`node.mcp.http`, `node.mcp.stdio`) decode a message, call
`McpCore.handle`, and turn any exception into a JSON-RPC error with `error_object`.

JSON-RPC error codes (`error.data.reason` names the cause in words too):

| code | meaning | HTTP | data |
|---|---|---|---|
| -32700 | parse error (body is not JSON, or nested too deeply) | 400 | reason |
| -32600 | invalid request (not one JSON-RPC object) | 400 |  |
| -32601 | method not found | 404 | method |
| -32602 | invalid params; unknown tool; bad args | 400 | tool, path, problem |
| -32603 | internal error (details only in our log) | 500 |  |
| -32020 | header mismatch (2026-07-28 routing hdrs) | 400 |  |
| -32022 | unsupported protocol version | 400 | supported, requested |
| -32800 | request cancelled | 200 |  |
| -32010 | denied by zone policy | 403 | policy="zone-order", zone, tool_zone |
| -32007 | blocked by a mitigation policy | 403 | policy, target, expires_at_s, until |
| -32011 | rate limited | 429 | retry_after_s, limit=per-origin/per-tool |
| -32012 | overloaded (unit busy, too many streams) | 503 | retry_after_s, limit |
| -32013 | tool unavailable (restarting/quarantined) | 503 | unit, state, retry_after_s |
| -32014 | tool timed out | 504 | timeout_s |
| -32015 | tool provider failed (upstream error) | 502 | upstream_code, detail |
| -32016 | unauthorized (no/unknown bearer token) | 401 |  |
| -32017 | forbidden Origin | 403 | origin |
| -32018 | session not found or expired | 404 |  |
| -32019 | request body too large | 413 | max_bytes |
| -32009 | POST body not `application/json` | 415 | content_type |
| -32008 | Accept lacks `application/json` or `text/event-stream` | 406 | accept |

Codes -32007..-32019 are ours (JSON-RPC's implementation-defined server range); the
SDK reserves -32000/-32001 client-side and -32020..-32022, -32042 in the protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

import msgspec

from vsmcp.node.errors import NodeError, clip
from vsmcp.node.mcp.client_requests import ClientRequests, ClientState, GatewayChannel, set_level
from vsmcp.node.mcp.offers import LIST_METHODS, OFFERS_CAPABILITIES, OFFERS_METHODS, OffersGateway
from vsmcp.node.routing.pinning import NotOnNode, UnknownNode
from vsmcp.node.tools.client_channel import ClientRequestFailed
from vsmcp.node.tools.errors import (
    InvalidArguments,
    Overloaded,
    PolicyBlocked,
    ProviderError,
    RateLimited,
    ResultTooLarge,
    ShuttingDown,
    ToolError,
    ToolTimeout,
    ToolUnavailable,
    UnknownTool,
    ZoneDenied,
)
from vsmcp.node.tools.model import (
    META_CAUSALITY,
    META_NODE,
    META_PRIORITY,
    META_TRACE_ID,
    CallContext,
    ToolCatalog,
    new_trace_id,
)
from vsmcp.node.vsm.priority import (
    DEFAULT_PRIORITY,
    PRIORITY_CLASSES,
    Priority,
    PriorityError,
    capped,
    parse_priority,
)

if TYPE_CHECKING:
    from vsmcp.node.mcp.find_tools import ToolFinder

log = logging.getLogger(__name__)

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
HEADER_MISMATCH: Final = -32020
FORBIDDEN_HOST: Final = -32021
UNSUPPORTED_PROTOCOL_VERSION: Final = -32022
REQUEST_CANCELLED: Final = -32800
POLICY_BLOCKED: Final = -32007
ZONE_DENIED: Final = -32010
RATE_LIMITED: Final = -32011
OVERLOADED: Final = -32012
TOOL_UNAVAILABLE: Final = -32013
TOOL_TIMEOUT: Final = -32014
PROVIDER_ERROR: Final = -32015
UNAUTHORIZED: Final = -32016
FORBIDDEN_ORIGIN: Final = -32017
SESSION_NOT_FOUND: Final = -32018
TOO_LARGE: Final = -32019
UNSUPPORTED_MEDIA_TYPE: Final = -32009
NOT_ACCEPTABLE: Final = -32008

HTTP_STATUS: Final[Mapping[int, int]] = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    METHOD_NOT_FOUND: 404,
    INVALID_PARAMS: 400,
    INTERNAL_ERROR: 500,
    HEADER_MISMATCH: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    ZONE_DENIED: 403,
    POLICY_BLOCKED: 403,
    RATE_LIMITED: 429,
    OVERLOADED: 503,
    TOOL_UNAVAILABLE: 503,
    TOOL_TIMEOUT: 504,
    PROVIDER_ERROR: 502,
    UNAUTHORIZED: 401,
    FORBIDDEN_ORIGIN: 403,
    FORBIDDEN_HOST: 421,
    SESSION_NOT_FOUND: 404,
    TOO_LARGE: 413,
    UNSUPPORTED_MEDIA_TYPE: 415,
    NOT_ACCEPTABLE: 406,
}

_TOOL_ERROR_CODES: Final[tuple[tuple[type[ToolError], int], ...]] = (
    (UnknownTool, INVALID_PARAMS),
    (UnknownNode, INVALID_PARAMS),
    (NotOnNode, INVALID_PARAMS),
    (InvalidArguments, INVALID_PARAMS),
    (ZoneDenied, ZONE_DENIED),
    (PolicyBlocked, POLICY_BLOCKED),
    (RateLimited, RATE_LIMITED),
    (Overloaded, OVERLOADED),
    (ToolUnavailable, TOOL_UNAVAILABLE),
    (ToolTimeout, TOOL_TIMEOUT),
    (ProviderError, PROVIDER_ERROR),
    (ClientRequestFailed, PROVIDER_ERROR),
    (ResultTooLarge, PROVIDER_ERROR),
    (ShuttingDown, TOOL_UNAVAILABLE),
)

HANDSHAKE_VERSIONS: Final = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS: Final = ("2026-07-28",)
LATEST_HANDSHAKE: Final = HANDSHAKE_VERSIONS[-1]

META_PROTOCOL_VERSION: Final = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_CAPABILITIES: Final = "io.modelcontextprotocol/clientCapabilities"
META_SERVER_INFO: Final = "io.modelcontextprotocol/serverInfo"
META_SUBSCRIPTION_ID: Final = "io.modelcontextprotocol/subscriptionId"
MAX_CAUSALITY: Final = 32
MAX_ID_CHARS: Final = 128

SERVER_INFO: Final[Mapping[str, str]] = {"name": "vsmcp", "version": "0.1.0"}


class McpError(NodeError):
    """A protocol-level error with its JSON-RPC code."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def error_object(exc: BaseException) -> dict[str, Any]:
    """The JSON-RPC `error` member for `exc`; unexpected exceptions are logged, not leaked."""
    if isinstance(exc, McpError):
        out: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if exc.data is not None:
            out["data"] = exc.data
        return out
    if isinstance(exc, ToolError):
        for cls, code in _TOOL_ERROR_CODES:
            if isinstance(exc, cls):
                return {"code": code, "message": exc.message, "data": exc.data}
        return {"code": INTERNAL_ERROR, "message": exc.message, "data": exc.data}
    log.error("internal error answering an MCP request", exc_info=exc)
    return {"code": INTERNAL_ERROR, "message": "Internal error"}


def error_message(request_id: Any, exc: BaseException) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error_object(exc)}


def result_message(request_id: Any, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def notification(method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        out["params"] = params
    return out


_encode_json = msgspec.json.Encoder().encode
_decode_json = msgspec.json.Decoder().decode


def encode(message: Mapping[str, Any]) -> bytes:
    return _encode_json(message)


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded JSON-RPC message from a client.

    Its views (`method`, `params`, `meta`, ...) are read many times per call, so they are
    computed once, by `of`.
    """

    raw: dict[str, Any]
    method: str | None
    id: Any
    params: dict[str, Any]
    meta: dict[str, Any]

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Message:
        method = raw.get("method")
        params = raw.get("params")
        params = params if isinstance(params, dict) else {}
        meta = params.get("_meta")
        return cls(
            raw,
            method if isinstance(method, str) else None,
            raw.get("id"),
            params,
            meta if isinstance(meta, dict) else {},
        )

    @property
    def is_request(self) -> bool:
        return "id" in self.raw and self.method is not None

    @property
    def is_notification(self) -> bool:
        return "id" not in self.raw and self.method is not None

    @property
    def is_response(self) -> bool:
        return self.method is None and ("result" in self.raw or "error" in self.raw)


def decode(body: bytes | str) -> Message:
    """Parse one JSON-RPC message; `McpError` -32700 or -32600 when it is not one."""
    try:
        value = _decode_json(body)
    except msgspec.DecodeError:
        raise McpError(PARSE_ERROR, "Parse error: the body is not valid JSON") from None
    except RecursionError:
        raise McpError(
            PARSE_ERROR,
            "Parse error: the JSON is nested too deeply to parse (about 1,000 levels at most)",
            {"reason": "too_deep"},
        ) from None
    if isinstance(value, list):
        raise McpError(INVALID_REQUEST, "Invalid request: JSON-RPC batches are not supported")
    if not isinstance(value, dict) or value.get("jsonrpc") != "2.0":
        raise McpError(INVALID_REQUEST, "Invalid request: expected one JSON-RPC 2.0 object")
    message = Message.of(value)
    request_id = value.get("id")
    if "id" in value and (
        isinstance(request_id, bool) or not isinstance(request_id, str | int | None)
    ):
        raise McpError(INVALID_REQUEST, "Invalid request: id must be a string or an integer")
    if not (message.is_request or message.is_notification or message.is_response):
        raise McpError(INVALID_REQUEST, "Invalid request: no method")
    if "params" in value and not isinstance(value["params"], dict):
        raise McpError(INVALID_REQUEST, "Invalid request: params must be an object")
    return message


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated client: its id, zone and origin (`http:<token name>`, `stdio`),
    and for HTTP its address (what an `addr:<ip>` mitigation blocks)."""

    caller_id: str
    zone: str
    origin: str
    addr: str | None = None
    # The highest priority class its calls may ask for (a higher one is capped to it).
    max_priority: Priority = DEFAULT_PRIORITY


Notify = Callable[[dict[str, Any]], Awaitable[None]]


def _pinned_node(tool: str, meta: Mapping[str, Any]) -> str | None:
    """The node a call is pinned to (`_meta` `vsmcp/node`), checked for shape."""
    pin = meta.get(META_NODE)
    if pin is None:
        return None
    if not isinstance(pin, str) or not pin or len(pin) > MAX_ID_CHARS:
        raise McpError(
            INVALID_PARAMS,
            f"Invalid params: _meta {META_NODE!r} of a call to {clip(tool)!r} must be a node id "
            f"or name (a non-empty string of at most {MAX_ID_CHARS} characters)",
            {"tool": clip(tool)},
        )
    return pin


def _priority(tool: str, meta: Mapping[str, Any], cap: Priority) -> Priority:
    """The call's class (`_meta` `vsmcp/priority`), capped by the caller's grant."""
    value = meta.get(META_PRIORITY)
    if value is None:
        return capped(DEFAULT_PRIORITY, cap)
    try:
        return capped(parse_priority(value), cap)
    except PriorityError as e:
        raise McpError(
            INVALID_PARAMS,
            f"Invalid params: _meta {META_PRIORITY!r} of a call to {clip(tool)!r}: {e}",
            {"tool": clip(tool), "field": META_PRIORITY, "allowed": list(PRIORITY_CLASSES)},
        ) from None


def _trace_fields(meta: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    trace = meta.get(META_TRACE_ID)
    trace_id = trace if isinstance(trace, str) and 0 < len(trace) <= MAX_ID_CHARS else None
    chain = meta.get(META_CAUSALITY)
    causality: tuple[str, ...] = ()
    if isinstance(chain, list):
        causality = tuple(
            c for c in chain[-MAX_CAUSALITY:] if isinstance(c, str) and len(c) <= MAX_ID_CHARS
        )
    return trace_id or new_trace_id(), causality


class McpCore:
    """Transport-independent method handling over a `ToolCatalog`."""

    def __init__(self, catalog: ToolCatalog, server_info: Mapping[str, str] = SERVER_INFO):
        self.catalog = catalog
        self.server_info = dict(server_info)
        # `mcp.max_listed_tools`: a short tools/list and `vsm.find_tools` (find_tools.py).
        self.finder: ToolFinder | None = None
        # Server-to-client requests of calls in flight, waiting for their clients.
        self.client_requests = ClientRequests()
        self.offers = OffersGateway(catalog)

    def capabilities(self) -> dict[str, Any]:
        return {"tools": {"listChanged": True}, "logging": {}, **OFFERS_CAPABILITIES}

    def initialize_result(self, params: Mapping[str, Any]) -> dict[str, Any]:
        requested = params.get("protocolVersion")
        version = requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE
        return {
            "protocolVersion": version,
            "capabilities": self.capabilities(),
            "serverInfo": self.server_info,
            "instructions": "vsmcp node: the tools of the mesh this caller may use.",
        }

    def discover_result(self) -> dict[str, Any]:
        return {
            "supportedVersions": list(MODERN_VERSIONS),
            "capabilities": self.capabilities(),
            "resultType": "complete",
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": {META_SERVER_INFO: self.server_info},
        }

    def context(
        self,
        caller: Caller,
        message: Message,
        notify: Notify | None,
        client: ClientState | None = None,
    ) -> CallContext:
        trace_id, causality = _trace_fields(message.meta)
        token = message.meta.get("progressToken")
        progress = None
        if notify is not None and isinstance(token, str | int) and not isinstance(token, bool):

            async def progress(value: float, total: float | None, text: str | None) -> None:
                params: dict[str, Any] = {"progressToken": token, "progress": value}
                if total is not None:
                    params["total"] = total
                if text is not None:
                    params["message"] = text
                await notify(notification("notifications/progress", params))

        return CallContext(
            caller_id=caller.caller_id,
            caller_zone=caller.zone,
            origin=caller.origin,
            trace_id=trace_id,
            causality=causality,
            progress=progress,
            client_addr=caller.addr,
            client=(
                None
                if client is None or notify is None
                else self.client_requests.channel(client, notify)
            ),
        )

    def call_context(
        self,
        caller: Caller,
        message: Message,
        notify: Notify | None,
        what: str,
        client: ClientState | None = None,
    ) -> CallContext:
        """The context of a call (`what`: the tool or method), with its pin and priority."""
        ctx = self.context(caller, message, notify, client)
        pin = _pinned_node(what, message.meta)
        priority = _priority(what, message.meta, caller.max_priority)
        if pin is not None or priority != ctx.priority:
            ctx = replace(ctx, pinned_node=pin, priority=priority)
        return ctx

    async def handle(
        self,
        message: Message,
        caller: Caller,
        *,
        modern: bool,
        notify: Notify | None = None,
        client: ClientState | None = None,
    ) -> dict[str, Any]:
        """The result for one request (`ping`, `tools/list`, `tools/call`, ...); raises on
        error. `client` is the calling client's state (its capabilities, log level)."""
        method = message.method
        if method == "ping":
            return {}
        if method == "logging/setLevel":
            problem = set_level(client, message.params)
            if problem is not None:
                raise McpError(INVALID_PARAMS, f"Invalid params: {problem}", {"field": "level"})
            return {}
        if method == "tools/list":
            ctx = self.context(caller, message, None)
            tools = self.catalog.list_tools(ctx)
            if self.finder is not None:
                tools = self.finder.listed(tools)
            result: dict[str, Any] = {"tools": [t.to_mcp() for t in tools]}
            if modern:
                result.update(resultType="complete", ttlMs=0, cacheScope="private")
            return result
        if method == "tools/call":
            name = message.params.get("name")
            arguments = message.params.get("arguments")
            if not isinstance(name, str) or not name:
                raise McpError(INVALID_PARAMS, "Invalid params: tools/call needs a tool 'name'")
            if arguments is None:
                arguments = {}
            if not isinstance(arguments, dict):
                raise InvalidArguments(name, "arguments must be an object", "arguments")
            ctx = self.call_context(caller, message, notify, name, client)
            try:
                if self.finder is not None and self.finder.serves(name):
                    result = dict(await self.finder.find(self.catalog.list_tools(ctx), arguments))
                else:
                    result = dict(await self.catalog.call_tool(name, arguments, ctx))
            finally:
                _end_channel(ctx)
            if modern:
                result["resultType"] = "complete"
            return result
        if method in OFFERS_METHODS:
            ctx = self.call_context(caller, message, notify, method, client)
            try:
                result = await self.offers.handle(method, message.params, ctx)
            finally:
                _end_channel(ctx)
            if modern:
                result["resultType"] = "complete"
                if method in LIST_METHODS:
                    result.update(ttlMs=0, cacheScope="private")
            return result
        method = clip(str(method))
        raise McpError(METHOD_NOT_FOUND, f"Method not found: {method!r}", {"method": method})


def _end_channel(ctx: CallContext) -> None:
    """The call is answered: its client channel takes no more logs or requests."""
    if isinstance(ctx.client, GatewayChannel):
        ctx.client.close()
