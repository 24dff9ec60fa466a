"""The node's tools (System 1 units), their supervision and call policy.

Public API: `ToolSpec`, `CallContext`, `ToolCatalog`, `Provider` (model);
`LocalCatalog`, `build_local_catalog` (registry); `Supervisor`, `UnitPolicy`
(supervisor); `CallPolicy`, `zone_allows` (policy); errors in `node.tools.errors`.
"""

from __future__ import annotations

from vsmcp.node.tools.model import CallContext, Provider, ToolCatalog, ToolResult, ToolSpec
from vsmcp.node.tools.policy import CallPolicy, zone_allows
from vsmcp.node.tools.registry import LocalCatalog, build_local_catalog
from vsmcp.node.tools.supervisor import Supervisor, UnitPolicy, UnitState

__all__ = [
    "CallContext",
    "CallPolicy",
    "LocalCatalog",
    "Provider",
    "Supervisor",
    "ToolCatalog",
    "ToolResult",
    "ToolSpec",
    "UnitPolicy",
    "UnitState",
    "build_local_catalog",
    "zone_allows",
]
