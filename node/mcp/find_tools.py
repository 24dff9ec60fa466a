"""Many tools: a short `tools/list` and the search tool `vsm.find_tools`.

A mesh can offer more tools than an agent should read at once (every schema costs it
context). With `mcp.max_listed_tools` set and the caller's tool set larger than it,
`tools/list` answers `vsm.find_tools` plus the first `max_listed_tools - 1` tools by
name; `vsm.find_tools` takes a query in words and answers the best matching tools with
their schemas, ranked by the BM25 index of System 4's offline planner
(`node/vsm/s4/matcher.py`: names, descriptions, argument names and enums). Any tool is
still called by its name, listed or not. The search covers what `tools/list` would list
in full, so the caller's zone applies to it as to the list.

The gateway answers `vsm.find_tools` itself, as it answers `tools/list` (a view of the
list, not a tool of any unit): it is not audited, rate limited or routed.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from vsmcp.node.tools.errors import InvalidArguments
from vsmcp.node.tools.model import ToolResult, ToolSpec

if TYPE_CHECKING:
    from vsmcp.node.vsm.s4.matcher import ToolIndex

FIND_TOOLS: Final = "vsm.find_tools"
DEFAULT_LIMIT: Final = 10
MAX_LIMIT: Final = 50
MAX_QUERY_CHARS: Final = 1000
# Indexes kept, one per distinct tool set (callers of different zones see different sets).
MAX_CACHED_INDEXES: Final = 8

_INPUT_SCHEMA: Final[Mapping[str, Any]] = {
    "type": "object",
    "properties": {
        "query": {
            "type": "string",
            "description": "What the tool should do, in words (e.g. 'current time in a city')",
            "minLength": 1,
            "maxLength": MAX_QUERY_CHARS,
        },
        "limit": {
            "type": "integer",
            "description": f"How many tools at most (default {DEFAULT_LIMIT})",
            "minimum": 1,
            "maximum": MAX_LIMIT,
        },
    },
    "required": ["query"],
    "additionalProperties": False,
}

_OUTPUT_SCHEMA: Final[Mapping[str, Any]] = {
    "type": "object",
    "properties": {
        "tools": {"type": "array", "items": {"type": "object"}},
        "total": {"type": "integer"},
    },
    "required": ["tools", "total"],
}

FIND_TOOLS_SPEC: Final = ToolSpec(
    name=FIND_TOOLS,
    description=(
        "Search the tools of the mesh: this list is short, the mesh offers more. Give what "
        "you want done in words; get the best matching tools with their input schemas, then "
        "call one by its name."
    ),
    input_schema=_INPUT_SCHEMA,
    output_schema=_OUTPUT_SCHEMA,
    annotations={"readOnlyHint": True, "idempotentHint": True},
)


class ToolFinder:
    """The short list and the search over the full one, for `max_listed` tools at most."""

    def __init__(self, max_listed: int) -> None:
        if max_listed < 2:
            raise ValueError("max_listed must leave room for vsm.find_tools and a tool")
        self.max_listed = max_listed
        self._indexes: OrderedDict[tuple[int, ...], ToolIndex] = OrderedDict()

    def listed(self, tools: Sequence[ToolSpec]) -> list[ToolSpec]:
        """What `tools/list` shows of `tools` (sorted by name): all of them, or
        `vsm.find_tools` and the first `max_listed - 1`."""
        if len(tools) <= self.max_listed:
            return list(tools)
        return [FIND_TOOLS_SPEC, *tools[: self.max_listed - 1]]

    async def find(self, tools: Sequence[ToolSpec], arguments: Mapping[str, Any]) -> ToolResult:
        """`vsm.find_tools`' answer over `tools` (what the caller may call)."""
        query, limit = _parse(arguments)
        found = (await self._index(tools)).search(query, limit)
        answer = {"tools": [spec.to_mcp() for spec, _ in found], "total": len(tools)}
        return {
            "content": [{"type": "text", "text": json.dumps(answer)}],
            "structuredContent": answer,
            "isError": False,
        }

    async def _index(self, tools: Sequence[ToolSpec]) -> ToolIndex:
        # The catalog hands out the same spec objects while its tool set stands still;
        # the cached index holds them, so their ids cannot be reused meanwhile.
        key = tuple(id(spec) for spec in tools)
        index = self._indexes.get(key)
        if index is not None:
            self._indexes.move_to_end(key)
            return index
        # Imported at the first search: most nodes never need the index.
        from vsmcp.node.vsm.s4.matcher import ToolIndex

        # Built off the event loop: over a thousand tools it takes a tenth of a second or more.
        index = self._indexes[key] = await asyncio.to_thread(ToolIndex, list(tools))
        if len(self._indexes) > MAX_CACHED_INDEXES:
            self._indexes.popitem(last=False)
        return index


def _parse(arguments: Mapping[str, Any]) -> tuple[str, int]:
    extra = sorted(set(arguments) - {"query", "limit"})
    if extra:
        raise InvalidArguments(FIND_TOOLS, f"unknown argument {extra[0]!r}", extra[0])
    query = arguments.get("query")
    if not isinstance(query, str) or not query.strip():
        raise InvalidArguments(FIND_TOOLS, "'query' must be a non-empty string", "query")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidArguments(
            FIND_TOOLS, f"'query' is longer than {MAX_QUERY_CHARS} characters", "query"
        )
    limit = arguments.get("limit", DEFAULT_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidArguments(
            FIND_TOOLS, f"'limit' must be an integer from 1 to {MAX_LIMIT}", "limit"
        )
    return query, limit
