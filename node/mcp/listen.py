"""A 2026-07-28 `subscriptions/listen` request, for both transports: which list-changed
flags it is honoured, its acknowledgement, the notifications it carries and its graceful
end. Every message carries the listen request's id in `_meta`
(`io.modelcontextprotocol/subscriptionId`), so a client tells its streams apart; over
HTTP they go on the listen's SSE stream, over stdio on stdout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from vsmcp.node.mcp.offers import LISTEN_FLAGS
from vsmcp.node.mcp.protocol import (
    META_SUBSCRIPTION_ID,
    OVERLOADED,
    McpError,
    Message,
    notification,
    result_message,
)

ACKNOWLEDGED_METHOD: Final = "notifications/subscriptions/acknowledged"
# The `limit` of the refusal of a listen past its caller's quota (`too_many_listens`).
LISTENERS_PER_CALLER: Final = "listeners_per_caller"


def too_many_listens() -> McpError:
    """A listen refused: its caller has as many open as it may (HTTP and stdio alike)."""
    return McpError(
        OVERLOADED,
        "Too many open notification streams for this caller",
        {"limit": LISTENERS_PER_CALLER, "retry_after_s": 1.0},
    )


def is_too_many_listens(code: int, data: object) -> bool:
    """Whether an error's code and data are `too_many_listens`'s (as a client sees it)."""
    return (
        code == OVERLOADED and isinstance(data, dict) and data.get("limit") == LISTENERS_PER_CALLER
    )


def listen_meta(message: Message) -> dict[str, Any]:
    """The `_meta` every message of this listen carries."""
    return {META_SUBSCRIPTION_ID: message.id}


def honored_flags(message: Message) -> list[str]:
    """The list-changed flags (`toolsListChanged`, ...) asked for and honoured."""
    wanted = message.params.get("notifications")
    if not isinstance(wanted, dict):
        return []
    return [flag for flag in LISTEN_FLAGS if wanted.get(flag) is True]


def acknowledgement(message: Message, flags: Sequence[str], uris: Sequence[str]) -> dict[str, Any]:
    """The acknowledgement: the flags honoured, and the resource URIs subscribed (if any)."""
    honored: dict[str, Any] = dict.fromkeys(flags, True)
    if uris:
        honored["resourceSubscriptions"] = list(uris)
    params = {"notifications": honored, "_meta": listen_meta(message)}
    return notification(ACKNOWLEDGED_METHOD, params)


def list_changed(message: Message, flags: Sequence[str]) -> list[dict[str, Any]]:
    """The notifications of one change of the mesh's lists, one per honoured flag."""
    return [notification(LISTEN_FLAGS[flag], {"_meta": listen_meta(message)}) for flag in flags]


def ended(message: Message) -> dict[str, Any]:
    """The listen request's result: the graceful end of its stream."""
    return result_message(message.id, {"_meta": listen_meta(message)})
