"""MQTT 5 request/response: a JSON-RPC request on a call topic, its answer on the
request's response topic with the request's correlation data.

The request is what `/mcp` takes (`tools/call`, `tools/list`, `ping`), answered by the
same `McpCore` with the same error mapping (node/mcp/protocol.py). The caller's zone
comes from the topic the request arrived on (`CallTopics`): MQTT tells a subscriber
nothing about who published, so the broker's ACL on those topics is what a zone grant
rests on. The caller's origin is `mqtt:<topic>` (what rate limits and blocks key on).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

from vsmcp.node.bridges.mqtt_telemetry import topic_names
from vsmcp.node.mcp.protocol import (
    TOO_LARGE,
    Caller,
    McpCore,
    McpError,
    decode,
    error_message,
    result_message,
)
from vsmcp.node.tools.errors import ToolError

log = logging.getLogger(__name__)

ORIGIN_PREFIX: Final = "mqtt:"


class CallTopics:
    """The request topic filters this node answers and the zone each grants."""

    def __init__(self, grants: Mapping[str, str], zones: Sequence[str]) -> None:
        self.filters = dict(grants)
        self._levels = [(f.split("/"), zone) for f, zone in grants.items()]
        self._rank = {zone: i for i, zone in enumerate(zones)}

    def zone_of(self, topic: str) -> str | None:
        """The zone a request on `topic` gets (the lowest of the filters it matches)."""
        found: str | None = None
        for levels, zone in self._levels:
            if levels[0] == "$share":  # $share/<group>/<filter>
                levels = levels[2:]
            if topic_names(levels, topic) is not None and (
                found is None or self._rank[zone] < self._rank[found]
            ):
                found = zone
        return found


async def answer(
    core: McpCore, caller: Caller, payload: bytes, max_bytes: int
) -> dict[str, Any] | None:
    """The JSON-RPC answer to one request; None for a notification or a response (no
    answer is due). Never raises but for cancellation."""
    if len(payload) > max_bytes:
        error = McpError(
            TOO_LARGE, f"Request too large: over {max_bytes} bytes", {"max_bytes": max_bytes}
        )
        return error_message(None, error)
    try:
        message = decode(payload)
    except McpError as e:
        return error_message(None, e)
    if not message.is_request:
        return None
    try:
        result = await core.handle(message, caller, modern=False)
    except (McpError, ToolError) as e:
        return error_message(message.id, e)
    except Exception as e:  # noqa: BLE001 - top-level handler of one request: -32603, logged
        return error_message(message.id, e)
    return result_message(message.id, result)
