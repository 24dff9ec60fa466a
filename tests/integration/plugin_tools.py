"""Plugin tools loaded by the `vsmcpd` processes of the integration tests
(`target = "tests.integration.plugin_tools:add"`; the nodes run with cwd = repo root)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node.tools.functions import tool


@tool(
    name="add",
    description="Add two integers.",
    input_schema={
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
)
def add(arguments: Mapping[str, Any]) -> dict[str, int]:
    return {"sum": arguments["a"] + arguments["b"]}


@tool(
    name="block",
    description="Write `marker`, then block this call's thread for ever.",
    input_schema={
        "type": "object",
        "properties": {"marker": {"type": "string"}},
        "required": ["marker"],
    },
)
def block(arguments: Mapping[str, Any]) -> str:
    Path(arguments["marker"]).write_text("blocked")
    threading.Event().wait()
    return "unreachable"
