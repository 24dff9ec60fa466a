"""Plugin targets used by the tests (imported by `module:function` path)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from vsmcp.node.tools.functions import tool
from vsmcp.node.tools.model import CallContext

CANCELLED: list[str] = []
STARTED: list[str] = []


@tool(
    name="add",
    description="Add two integers.",
    input_schema={
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
)
def add(arguments: Mapping[str, Any]) -> dict[str, int]:
    return {"sum": arguments["a"] + arguments["b"]}


async def slow(arguments: Mapping[str, Any], ctx: CallContext) -> str:
    """Report progress `steps` times, then wait `hold_s` (recording a cancellation)."""
    STARTED.append(ctx.trace_id)
    steps = int(arguments.get("steps", 3))
    for i in range(steps):
        await ctx.report_progress(i + 1, steps, f"step {i + 1}")
    try:
        await asyncio.sleep(float(arguments.get("hold_s", 0)))
    except asyncio.CancelledError:
        CANCELLED.append(ctx.trace_id)
        raise
    return "slow done"


def broken(arguments: Mapping[str, Any]) -> str:
    raise RuntimeError("plugin bug")


def priority(arguments: Mapping[str, Any], ctx: CallContext) -> dict[str, str]:
    """The priority class the call arrived with (after the gateway capped it)."""
    return {"priority": ctx.priority}
