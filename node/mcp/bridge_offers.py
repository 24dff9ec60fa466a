"""The node's resources, templates and prompts, as `vsmcp mcp-stdio`'s catalog offers them.

The bridge (`node.mcp.bridge`) is one provider to its stdio gateway: it lists what the
node lists to it (the node has already merged the mesh's offers and applied the
bridge's zone) as offers tools of its own (`vsm.mcp.node`, one more per 256 items of a
kind: an offers tool announces at most that many), and runs each request of them on
the node through its SDK client: reads, gets and completions as they are, a
`resources/subscribe` as a hold of that URI on the bridge's one listen at the node
(`node.mcp.bridge_listen`), until the call is cancelled (the stdio gateway's subscription
ends) or the node no longer holds the URI, each update passed to the call's client
channel. So the stdio gateway keeps its subscriptions with the same code as the HTTP one
(`node.mcp.subscriptions`), and the node keeps the provider side of each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from vsmcp.node.mcp.protocol import McpError
from vsmcp.node.tools.errors import ProviderError
from vsmcp.node.tools.model import CallContext, ToolResult, ToolSpec
from vsmcp.node.tools.mounted import validation_problems
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

    from vsmcp.node.mcp.bridge_listen import NodeListen

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
    client: Client, listen: NodeListen, tool: str, arguments: Mapping[str, Any], ctx: CallContext
) -> ToolResult:
    """One request of a bridge offers tool, on the node."""
    from mcp.shared.exceptions import MCPError
    from pydantic import ValidationError

    method, params = offer_request(arguments)
    if method == SUBSCRIBE_METHOD:
        channel = ctx.client
        if channel is None:
            raise ProviderError(tool, f"{SUBSCRIBE_METHOD}: the caller cannot be reached")
        await listen.hold(tool, str(params.get("uri")), channel)
        return offer_result({})
    try:
        return offer_result(await run_offer(client, method, params))
    except MCPError as e:
        # The node's own JSON-RPC error, passed through unchanged (as for tool calls).
        data = e.data if isinstance(e.data, dict) else None
        raise McpError(e.code, e.message, data) from None
    except ValidationError as e:
        # The SDK refused the request's params (or the node's answer) by its types: that
        # request fails, as a mount's does (`MountedServer._offer`), not as a crash.
        raise ProviderError(tool, f"{method}: {validation_problems(e)}") from None
