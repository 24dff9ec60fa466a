"""The tools of the whole mesh behind one `ToolCatalog`: what the MCP gateway serves.

For now this serves the local catalog; remote tools (from the replicated registry,
invoked over the mesh with failover) come in through the same interface.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mesh.certs import ZoneOrder
from node.audit import AuditLog
from node.mesh_service import MeshService
from node.replication import ReplicationService
from node.tools.model import CallContext, ChangeCallback, ToolResult, ToolSpec
from node.tools.registry import LocalCatalog


class MeshCatalog:
    """A `ToolCatalog` over the local units and the mesh. Async context manager."""

    def __init__(
        self,
        *,
        local: LocalCatalog,
        mesh: MeshService,
        replication: ReplicationService,
        node_id: str,
        zones: ZoneOrder,
        audit: AuditLog,
    ) -> None:
        self.local = local
        self._mesh = mesh
        self._replication = replication
        self._node_id = node_id
        self._zones = zones
        self._audit = audit

    def list_tools(self, ctx: CallContext) -> list[ToolSpec]:
        return self.local.list_tools(ctx)

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any], ctx: CallContext
    ) -> ToolResult:
        return await self.local.call_tool(name, arguments, ctx)

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        return self.local.on_change(callback)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def __aenter__(self) -> MeshCatalog:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
