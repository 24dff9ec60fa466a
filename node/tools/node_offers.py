"""The built-in unit's resources (`node.tools.offers`): `vsmcp://node/status`, the node's
status (what `vsm.status` answers) as a JSON resource."""

from __future__ import annotations

from typing import Any, Final

from vsmcp.node.tools.functions import PluginTool
from vsmcp.node.tools.plugin_offers import PluginResource, offers_tool

STATUS_URI: Final = "vsmcp://node/status"
NODE_OFFERS_UNIT: Final = "node"


def node_offers_tool(status: Any, zone: str) -> PluginTool:
    """The offers tool of the built-in unit; `status()` returns the node's status."""
    resource = PluginResource(
        uri=STATUS_URI,
        fn=status,
        name="node-status",
        description="This node's status: identity, VSM systems, viability (pin a node with "
        "_meta vsmcp/node to read another's).",
        mime_type="application/json",
    )
    return offers_tool(NODE_OFFERS_UNIT, resources=[resource], zone=zone, provider="builtin")
