"""The MCP tools `vsm.spawn_child` and `vsm.stop_child` (zone `recursion.spawn_zone`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from vsmcp.node.children.config import CHILD_NAME
from vsmcp.node.children.errors import ChildError
from vsmcp.node.tools.functions import FunctionProvider, PluginTool
from vsmcp.node.tools.model import CallContext, ToolResult, text_result, to_result

CHILDREN_UNIT: Final = "children"

# spawn(name, zone, config, caller) -> the child's view
SpawnFn = Callable[[str, str, str, str], dict[str, Any]]
# stop(name, caller)
StopFn = Callable[[str, str], Awaitable[None]]

_NAME: Final = {"type": "string", "pattern": f"^{CHILD_NAME.pattern}$"}
SPAWN_SCHEMA: Final[Mapping[str, Any]] = {
    "type": "object",
    "properties": {
        "name": _NAME,
        "zone": {"type": "string", "maxLength": 64, "description": "default: this node's"},
        "config": {"type": "string", "maxLength": 4096, "description": "child TOML path"},
    },
    "required": ["name"],
    "additionalProperties": False,
}
STOP_SCHEMA: Final[Mapping[str, Any]] = {
    "type": "object",
    "properties": {"name": _NAME},
    "required": ["name"],
    "additionalProperties": False,
}


def children_provider(spawn: SpawnFn, stop: StopFn, zone: str) -> FunctionProvider:
    async def spawn_child(arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        try:
            view = spawn(
                str(arguments["name"]),
                str(arguments.get("zone", "")),
                str(arguments.get("config", "")),
                ctx.caller_id,
            )
        except ChildError as e:  # a refusal is the caller's answer, not the tool's fault
            return text_result(f"refused: {e}", is_error=True)
        return to_result(view)

    async def stop_child(arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        try:
            await stop(str(arguments["name"]), ctx.caller_id)
        except ChildError as e:
            return text_result(f"refused: {e}", is_error=True)
        return to_result({"stopped": str(arguments["name"])})

    def load() -> list[PluginTool]:
        return [
            PluginTool(
                name="vsm.spawn_child",
                fn=spawn_child,
                description="Spawn a child VSM: a full vsmcpd below this node, certified by it.",
                input_schema=SPAWN_SCHEMA,
                zone=zone,
            ),
            PluginTool(
                name="vsm.stop_child",
                fn=stop_child,
                description="Stop one child VSM of this node (SIGTERM, then SIGKILL).",
                input_schema=STOP_SCHEMA,
                zone=zone,
            ),
        ]

    return FunctionProvider(CHILDREN_UNIT, load, kind="builtin")
