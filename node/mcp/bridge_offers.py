"""The node's resources, templates and prompts, as `vsmcp mcp-stdio`'s catalog offers them.

The bridge (`node.mcp.bridge`) is one provider to its stdio gateway: it lists what the
node lists to it (the node has already merged the mesh's offers and applied the
bridge's zone) as offers tools of its own (`vsm.mcp.node`, one more per 256 items of a
kind: an offers tool announces at most that many), and runs each request of them on
the node through its SDK client: reads, gets and completions as they are, a
`resources/subscribe` as a `subscriptions/listen` of that one URI at the node, held
until the call is cancelled (the stdio gateway's subscription ends) or the node ends
the stream, each `ResourceUpdated` passed to the call's client channel. So the stdio
gateway keeps its subscriptions with the same code as the HTTP one
(`node.mcp.subscriptions`), and the node keeps the provider side of each.

Each subscribed URI holds one listen stream at the node, counted against the node's
`mcp.max_listeners(_per_caller)` for the bridge's caller (all bridges of a node share
the stdio secret, so they are one caller there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from vsmcp.node.mcp.protocol import McpError
from vsmcp.node.tools.client_channel import UPDATED_METHOD
from vsmcp.node.tools.errors import ProviderError
from vsmcp.node.tools.model import CallContext, ToolResult, ToolSpec
from vsmcp.node.tools.mounted_offers import list_offers, run_offer
from vsmcp.node.tools.offers import (
    MAX_OFFERS_PER_KIND,
    SUBSCRIBE_METHOD,
    Offers,
    offer_request,
    offer_result,
    offers_spec,
)

if TYPE_CHECKING:
    from mcp.client.client import Client

UNIT: Final = "node"


def _chunk(items: tuple[dict[str, Any], ...], index: int) -> tuple[dict[str, Any], ...]:
    return items[index * MAX_OFFERS_PER_KIND : (index + 1) * MAX_OFFERS_PER_KIND]


def offers_specs(offers: Offers) -> list[ToolSpec]:
    """The offers tools announcing `offers` (in order: the gateway merges them back)."""
    kinds = (offers.resources, offers.templates, offers.prompts)
    count = max((len(k) + MAX_OFFERS_PER_KIND - 1) // MAX_OFFERS_PER_KIND for k in kinds)
    specs = []
    for index in range(count):
        part = Offers(*(_chunk(kind, index) for kind in kinds))
        unit = UNIT if index == 0 else f"{UNIT}.{index}"
        # The node decided the zone already; here every caller is the one stdio client.
        specs.append(offers_spec(unit, part, "public", "remote"))
    return specs


async def node_offers(client: Client) -> Offers:
    """What the node lists to this bridge (by the capabilities it declared)."""
    return await list_offers(client, "the node")


async def run_node_offer(
    client: Client, tool: str, arguments: Mapping[str, Any], ctx: CallContext
) -> ToolResult:
    """One request of a bridge offers tool, on the node."""
    from mcp.shared.exceptions import MCPError

    method, params = offer_request(arguments)
    if method == SUBSCRIBE_METHOD:
        return await _hold_subscription(client, tool, params, ctx)
    try:
        return offer_result(await run_offer(client, method, params))
    except MCPError as e:
        # The node's own JSON-RPC error, passed through unchanged (as for tool calls).
        data = e.data if isinstance(e.data, dict) else None
        raise McpError(e.code, e.message, data) from None


async def _hold_subscription(
    client: Client, tool: str, params: Mapping[str, Any], ctx: CallContext
) -> ToolResult:
    """Listen to the node for updates of one URI until cancelled or the node ends the
    stream; a refusal, or a stream lost, fails the call (the gateway tries once more)."""
    from mcp.client.subscriptions import (
        ListenNotSupportedError,
        ResourceUpdated,
        SubscriptionLost,
    )
    from mcp.shared.exceptions import MCPError

    uri = str(params.get("uri"))
    channel = ctx.client
    if channel is None:
        raise ProviderError(tool, f"{SUBSCRIBE_METHOD}: the caller cannot be reached")
    try:
        async with client.listen(resource_subscriptions=[uri]) as stream:
            if uri not in (stream.honored.resource_subscriptions or ()):
                raise ProviderError(tool, f"{SUBSCRIBE_METHOD}: the node did not take {uri!r}")
            async for event in stream:
                if isinstance(event, ResourceUpdated):
                    await channel.notify(UPDATED_METHOD, {"uri": event.uri})
    except (MCPError, SubscriptionLost, ListenNotSupportedError, TimeoutError) as e:
        raise ProviderError(tool, f"{SUBSCRIBE_METHOD}: {e}") from None
    return offer_result({})
