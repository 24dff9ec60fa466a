"""The way back to the client that made a call: its log notifications and its answers to
server-to-client requests (`sampling/createMessage`, `elicitation/create`, `roots/list`).

A provider that runs a call (a mounted server, a plugin) reaches the calling client
through `CallContext.client`, a `ClientChannel`. At the entry node the MCP gateway makes
one for the client's session (`node.mcp.client_requests`); at a provider node routing
makes one that travels back over the mesh to the entry node
(`node.routing.client_relay`). Either way the request is bounded by the call's deadline
and ends with the call, and a client that did not declare the capability a request
needs is refused before anything is sent (`ClientRequestFailed`, reason
`no_capability`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final, Protocol

from vsmcp.node.tools.errors import ToolError

# RFC 5424 severities as MCP names them, least severe first.
LOG_LEVELS: Final = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)
# The client capability each server-to-client request needs.
REQUEST_CAPABILITY: Final[Mapping[str, str]] = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}
CLIENT_METHODS: Final = tuple(REQUEST_CAPABILITY)
# The notification a provider sends, during a `resources/subscribe` offers call, for each
# update of the subscribed resource (`ClientChannel.notify`).
UPDATED_METHOD: Final = "notifications/resources/updated"
# Not MCP: a provider that knows when it holds a subscription (the `vsmcp mcp-stdio`
# bridge, once the node acknowledged the URI) says so on the call's channel, so the
# gateway answers `resources/subscribe` only once it is held (`node.mcp.subscriptions`).
HELD_METHOD: Final = "notifications/vsmcp/subscription_held"
# A 2026-07-28 request's `_meta` key for the log level its client wants.
META_LOG_LEVEL: Final = "io.modelcontextprotocol/logLevel"
# JSON-RPC codes the client side of a request is answered with (the provider's SDK
# turns them into its own error): the method is one we do not pass on, the client
# lacks the capability, or the answer was not one.
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
# What a mount's `MountClient.counts` counts (vsmcp_mount_client_total), besides the
# causes of a refused request (`ClientRequestFailed.cause`). Here, not in mount_client:
# the node registers the metric at start, and a node without mounts never imports that.
MOUNT_CLIENT_OUTCOMES: Final = (
    "logs",
    "logs_dropped",
    "refused",
    "answered",
    "malformed_answer",
    "updates",
)


def level_rank(level: str) -> int | None:
    """The severity rank of an MCP log level (None: not one)."""
    try:
        return LOG_LEVELS.index(level)
    except ValueError:
        return None


def log_wanted(threshold: str | None, level: str) -> bool:
    """Whether a message at `level` passes a client's `threshold` (None: no logs)."""
    if threshold is None:
        return False
    rank, floor = level_rank(level), level_rank(threshold)
    return rank is not None and floor is not None and rank >= floor


class ClientRequestFailed(ToolError):
    """A server-to-client request got no usable answer: refused here (`no_capability`,
    `unsupported`), timed out, or the client answered an error or garbage (`code`:
    the JSON-RPC code the provider is answered with)."""

    reason: ClassVar[str] = "client_request_failed"

    def __init__(self, method: str, why: str, *, code: int = INTERNAL_ERROR, cause: str) -> None:
        super().__init__(
            f"{method} to the client failed: {why}",
            {"method": method, "cause": cause, "code": code},
        )

    # Read from `data`: an error rebuilt from the wire (`routing.wire`) has only that.
    @property
    def code(self) -> int:
        code = self.data.get("code")
        return code if isinstance(code, int) and not isinstance(code, bool) else INTERNAL_ERROR

    @property
    def cause(self) -> str:
        return str(self.data.get("cause", self.reason))


def no_capability(method: str) -> ClientRequestFailed:
    capability = REQUEST_CAPABILITY.get(method, method)
    return ClientRequestFailed(
        method,
        f"the client that made this call did not declare the {capability!r} capability",
        code=METHOD_NOT_FOUND,
        cause="no_capability",
    )


def check_request(method: str, capabilities: frozenset[str]) -> None:
    """Refuse, before anything is sent, a request vsmcp does not pass on or one whose
    capability the client did not declare (`ClientRequestFailed`)."""
    capability = REQUEST_CAPABILITY.get(method)
    if capability is None:
        raise ClientRequestFailed(
            method,
            "not a server-to-client request vsmcp passes on",
            code=METHOD_NOT_FOUND,
            cause="unsupported",
        )
    if capability not in capabilities:
        raise no_capability(method)


class ClientChannel(Protocol):
    """The calling client, as a provider sees it during one call."""

    @property
    def log_level(self) -> str | None:
        """The least severe level it wants (None: no logs)."""
        ...

    def wants_log(self, level: str) -> bool:
        """Whether a log message at `level` reaches the client (its `logging/setLevel`)."""
        ...

    def capabilities(self) -> frozenset[str]:
        """The server-to-client capabilities it declared (`sampling`, `elicitation`, `roots`)."""
        ...

    async def log(self, params: Mapping[str, Any]) -> None:
        """Pass a `notifications/message` (its params) on, if its level is wanted."""
        ...

    async def notify(self, method: str, params: Mapping[str, Any]) -> None:
        """Pass a notification other than a log line on (`UPDATED_METHOD`); best effort."""
        ...

    async def request(
        self, method: str, params: Mapping[str, Any], timeout_s: float | None
    ) -> dict[str, Any]:
        """Ask the client; its result. Raises `ClientRequestFailed`."""
        ...


def check_answer(method: str, result: Any) -> dict[str, Any]:
    """A client's result for `method`, checked for the shape MCP gives it; garbage is
    `ClientRequestFailed` (cause `malformed_answer`) rather than passed on."""
    problem: str | None = None
    if not isinstance(result, dict):
        problem = f"a result must be an object, not {type(result).__name__}"
    elif method == "sampling/createMessage":
        if result.get("role") not in ("user", "assistant"):
            problem = "'role' must be 'user' or 'assistant'"
        elif not isinstance(result.get("content"), dict | list):
            problem = "'content' must be a content block or a list of them"
        elif not isinstance(result.get("model"), str):
            problem = "'model' must be a string"
    elif method == "elicitation/create":
        if result.get("action") not in ("accept", "decline", "cancel"):
            problem = "'action' must be 'accept', 'decline' or 'cancel'"
        elif "content" in result and not isinstance(result["content"], dict | type(None)):
            problem = "'content' must be an object"
    elif method == "roots/list":
        roots = result.get("roots")
        if not isinstance(roots, list) or not all(
            isinstance(r, dict) and isinstance(r.get("uri"), str) for r in roots
        ):
            problem = "'roots' must be a list of objects with a 'uri'"
    if problem is not None:
        raise ClientRequestFailed(
            method, f"the client's answer is malformed: {problem}", cause="malformed_answer"
        )
    assert isinstance(result, dict)
    return result
