"""The node's side of child VSMs: the manager once the node runs, `/api/children`
(authorized like `POST /api/algedonic`) and the tools' callbacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vsmcp.mesh.certs import ZoneOrder
from vsmcp.node.app.vsm_systems import VsmSystems
from vsmcp.node.app.zone_auth import authorize
from vsmcp.node.children.config import RecursionSection
from vsmcp.node.children.errors import ChildError, SpawnRefused, UnknownChild
from vsmcp.node.children.manager import ChildManager


class ChildrenApi:
    def __init__(self, data_dir: Path, limits: RecursionSection, zones: ZoneOrder) -> None:
        self._data_dir = data_dir
        self._limits = limits
        self._zones = zones
        self.manager: ChildManager | None = None

    def _require(self) -> ChildManager:
        if self.manager is None:
            raise ChildError("the node is not running yet")
        return self.manager

    def view(self) -> dict[str, Any]:
        return {"children": self.manager.view() if self.manager is not None else []}

    def spawn(self, name: str, zone: str, config: str, caller: str) -> dict[str, Any]:
        return self._require().spawn(name, zone=zone, config=config, caller=caller)

    async def stop(self, name: str, caller: str) -> None:
        await self._require().stop_child(name, caller=caller)

    def authorize(
        self, vsm: VsmSystems, authorization: str | None, remote: str | None
    ) -> tuple[str | None, tuple[int, dict[str, Any]] | None]:
        """(caller name, None) when allowed; else (None, (HTTP status, JSON body))."""
        return authorize(
            self._data_dir,
            vsm,
            self._zones,
            authorization,
            remote,
            zone=self._limits.spawn_zone,
            key="recursion.spawn_zone",
            action="spawn or stop children",
        )

    def post(self, body: object, caller: str) -> tuple[int, dict[str, Any]]:
        """`POST /api/children` {name, zone?, config?}: (HTTP status, JSON body)."""
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return 400, {"error": 'expected {"name": "...", "zone"?: "...", "config"?: "..."}'}
        zone, config = body.get("zone", ""), body.get("config", "")
        if not isinstance(zone, str) or not isinstance(config, str):
            return 400, {"error": "zone and config must be strings"}
        try:
            return 201, self.spawn(body["name"], zone, config, caller)
        except SpawnRefused as e:
            return 409, {"error": str(e)}
        except ChildError as e:
            return 503, {"error": str(e)}

    async def delete(self, name: str, caller: str) -> tuple[int, dict[str, Any]]:
        try:
            await self.stop(name, caller)
        except UnknownChild as e:
            return 404, {"error": str(e)}
        except ChildError as e:
            return 503, {"error": str(e)}
        return 200, {"stopped": name}
