"""A plugin tool that logs and asks its caller's model (sampling) through
`CallContext.client`, loaded by node A of tests/integration/test_client_requests.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vsmcp.node.tools.client_channel import ClientRequestFailed
from vsmcp.node.tools.functions import tool
from vsmcp.node.tools.model import CallContext


@tool(
    name="plugin.ask",
    description="Log, then ask the calling client's model a question.",
    input_schema={
        "type": "object",
        "properties": {"question": {"type": "string"}},
        "required": ["question"],
        "additionalProperties": False,
    },
)
async def ask(arguments: Mapping[str, Any], ctx: CallContext) -> str:
    client = ctx.client
    if client is None:
        raise ClientRequestFailed("sampling/createMessage", "no way back", cause="no_client")
    await client.log({"level": "notice", "logger": "plugin", "data": "plugin asks"})
    message = {"role": "user", "content": {"type": "text", "text": arguments["question"]}}
    result = await client.request(
        "sampling/createMessage", {"messages": [message], "maxTokens": 16}, ctx.remaining_s()
    )
    return f"plugin heard: {result['content']['text']}"
