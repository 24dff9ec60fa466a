"""Wire codec of tool invocations across the mesh (no I/O).

An entry node sends an INVOKE envelope whose payload is an `InvokeRequest`; the
provider answers RESULT (payload: the MCP `CallToolResult` dict, msgpack) or ERROR
(payload: an `InvokeError`, the structured `ToolError` the provider raised, so the
entry node raises the same error class and the caller gets the same JSON-RPC error
it would get locally). While a call runs the provider may send PROGRESS one-way
envelopes (`CallProgress`) keyed by the entry node's call id; one with `ack=True`
only says "the call started here" (see `node.routing`).

Everything decoded here arrives inside a signed envelope whose size is already capped
(`envelope.max_bytes`); the codec caps string lengths and list sizes on top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta

from vsmcp.node.errors import NodeError
from vsmcp.node.tools.client_channel import ClientRequestFailed
from vsmcp.node.tools.errors import (
    InvalidArguments,
    Overloaded,
    PolicyBlocked,
    ProviderError,
    RateLimited,
    ToolError,
    ToolTimeout,
    ToolUnavailable,
    UnknownTool,
    ZoneDenied,
)
from vsmcp.node.tools.model import ToolResult

MAX_TOOL_NAME_CHARS: Final = 256
MAX_ID_CHARS: Final = 256
MAX_CAUSALITY_ENTRIES: Final = 64
MAX_MESSAGE_CHARS: Final = 4096
# Providers one call may be tried on, mesh-wide (a surge must not be multiplied by failover).
MAX_ATTEMPTS: Final = 3


def attempts_left(tried: Sequence[str]) -> int:
    """How many more providers a call may try, counting every one tried so far (the
    entry node's own unit included): never more than MAX_ATTEMPTS in all."""
    return max(0, MAX_ATTEMPTS - len(tried))


_Name = Annotated[str, Meta(max_length=MAX_TOOL_NAME_CHARS)]
_Id = Annotated[str, Meta(max_length=MAX_ID_CHARS)]
_Text = Annotated[str, Meta(max_length=MAX_MESSAGE_CHARS)]


class InvokeCodecError(NodeError):
    """A payload that does not decode as the message it claims to be."""

    reason = "malformed"


class InvokeRequest(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    """One tool call, as the entry node asks a provider to run it.

    `caller_zone` is a claim: the provider lowers it to the entry node's certificate
    zone. `timeout_ms` is what is left of the caller's deadline when the call leaves.
    """

    call_id: Annotated[int, Meta(ge=0)]
    tool: _Name
    arguments: dict[str, Any]
    caller_id: _Id
    caller_zone: _Id
    origin: _Id
    trace_id: _Id
    causality: Annotated[tuple[_Id, ...], Meta(max_length=MAX_CAUSALITY_ENTRIES)] = ()
    timeout_ms: Annotated[int, Meta(ge=0)] = 0
    progress: bool = False
    # Appended fields (an older node's request lacks them: the defaults apply; an older
    # node ignores them). `priority` is the class the entry node admitted the call at;
    # `attempt` counts the providers tried for this call so far (1: the first), so that
    # failover stays within MAX_ATTEMPTS mesh-wide.
    priority: _Id = "normal"
    attempt: Annotated[int, Meta(ge=1, le=MAX_ATTEMPTS)] = 1
    # The calling client's way back (`node.routing.client_relay`): whether the entry node
    # has one, the server-to-client capabilities it declared, its log level ("": none).
    client: bool = False
    client_caps: Annotated[tuple[_Id, ...], Meta(max_length=8)] = ()
    log_level: _Id = ""


class InvokeError(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    """A refusal or failure at the provider: a `ToolError`'s reason, message and data."""

    reason: _Id
    message: _Text
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class CallProgress(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    """A progress notification for the entry node's call `call_id` (or a start ack)."""

    call_id: Annotated[int, Meta(ge=0)]
    progress: float = 0.0
    total: float | None = None
    message: _Text | None = None
    ack: bool = False


_encoder = msgspec.msgpack.Encoder()
_decode_request = msgspec.msgpack.Decoder(InvokeRequest).decode
_decode_error = msgspec.msgpack.Decoder(InvokeError).decode
_decode_progress = msgspec.msgpack.Decoder(CallProgress).decode
_decode_result = msgspec.msgpack.Decoder(dict[str, Any]).decode


def encode(message: InvokeRequest | InvokeError | CallProgress | Mapping[str, Any]) -> bytes:
    """msgpack bytes of a request, error, progress, or a result dict."""
    return _encoder.encode(message)


def _decode(decoder: Any, payload: bytes, what: str) -> Any:
    try:
        return decoder(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise InvokeCodecError(f"bad {what}: {e}") from None


def decode_request(payload: bytes) -> InvokeRequest:
    request: InvokeRequest = _decode(_decode_request, payload, "invoke request")
    return request


def decode_error(payload: bytes) -> InvokeError:
    error: InvokeError = _decode(_decode_error, payload, "invoke error")
    return error


def decode_progress(payload: bytes) -> CallProgress:
    progress: CallProgress = _decode(_decode_progress, payload, "progress")
    return progress


def decode_result(payload: bytes) -> ToolResult:
    """A `CallToolResult`-shaped dict; `InvokeCodecError` unless it has a content list."""
    result: ToolResult = _decode(_decode_result, payload, "invoke result")
    if not isinstance(result.get("content"), list):
        raise InvokeCodecError("bad invoke result: no content list")
    return result


# -- ToolError <-> InvokeError ------------------------------------------------------------

ERROR_CLASSES: Final[Mapping[str, type[ToolError]]] = {
    cls.reason: cls
    for cls in (
        ClientRequestFailed,
        UnknownTool,
        InvalidArguments,
        ZoneDenied,
        PolicyBlocked,
        RateLimited,
        Overloaded,
        ToolUnavailable,
        ToolTimeout,
        ProviderError,
    )
}


def error_from_tool_error(exc: ToolError) -> InvokeError:
    data = {k: v for k, v in exc.data.items() if k != "reason"}
    return InvokeError(reason=exc.reason, message=exc.message[:MAX_MESSAGE_CHARS], data=data)


def tool_error_from(error: InvokeError) -> ToolError:
    """The same `ToolError` subclass the provider raised, with its message and data.

    An unknown reason (a newer provider) becomes a plain `ToolError` that keeps the
    provider's reason in its data.
    """
    cls = ERROR_CLASSES.get(error.reason, ToolError)
    exc = cls.__new__(cls)
    ToolError.__init__(exc, error.message, dict(error.data))
    if cls is ToolError:
        exc.data["reason"] = error.reason
    return exc
