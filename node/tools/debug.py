"""Tools added and removed at runtime through `/api/debug/tools` (only with
`node.debug_api = true`): tests and benchmarks use them to exercise announcement,
replication and routing through the same paths as real tools. Each one echoes its
arguments back as JSON text.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vsmcp.node.tools.errors import UnknownTool
from vsmcp.node.tools.model import CallContext, ToolResult, ToolSpec, text_result

DEBUG_UNIT = "debug"
MAX_DEBUG_TOOLS = 1024

_ANY_OBJECT: Mapping[str, Any] = {"type": "object"}


class DebugTools:
    """A provider whose tool list changes while it runs."""

    def __init__(self) -> None:
        self._specs: dict[str, ToolSpec] = {}
        self._on_change: Callable[[], None] | None = None

    @property
    def name(self) -> str:
        return DEBUG_UNIT

    def tools(self) -> Sequence[ToolSpec]:
        return tuple(self._specs.values())

    def set_on_change(self, callback: Callable[[], None]) -> None:
        self._on_change = callback

    async def run(self, ready: Callable[[], None], stop: asyncio.Event) -> None:
        ready()
        await stop.wait()

    async def call(self, tool: str, arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        if tool not in self._specs:
            raise UnknownTool(tool)
        return text_result(json.dumps(dict(arguments), sort_keys=True))

    def add(self, name: str, zone: str = "public") -> None:
        if name not in self._specs and len(self._specs) >= MAX_DEBUG_TOOLS:
            raise ValueError(f"at most {MAX_DEBUG_TOOLS} debug tools")
        self._specs[name] = ToolSpec(
            name=name,
            description="Debug tool: echoes its arguments as JSON.",
            input_schema=_ANY_OBJECT,
            zone=zone,
            provider="plugin",
        )
        self._changed()

    def remove(self, name: str) -> bool:
        removed = self._specs.pop(name, None) is not None
        if removed:
            self._changed()
        return removed

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()
