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
        self._indexes: OrderedDict[tuple[_SpecKey, ...], asyncio.Future[ToolIndex]] = OrderedDict()

    @staticmethod
    def serves(name: str) -> bool:
        """Whether a `tools/call` of `name` is this finder's (`vsm.find_tools`)."""
        return name == FIND_TOOLS

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
        # The index may be of equal specs listed earlier: answer the ones listed now.
        current = {spec.name: spec for spec in tools}
        answer = {
            "tools": [current[spec.name].to_mcp() for spec, _ in found],
            "total": len(tools),
        }
        return {
            "content": [{"type": "text", "text": json.dumps(answer)}],
            "structuredContent": answer,
            "isError": False,
        }

    async def _index(self, tools: Sequence[ToolSpec]) -> ToolIndex:
        key = tuple(_spec_key(spec) for spec in tools)
        built = self._indexes.get(key)
        if built is None:
            # One build per tool set, shared by the searches that want it meanwhile.
            built = self._indexes[key] = asyncio.ensure_future(_build(list(tools)))
            built.add_done_callback(lambda done: self._forget_failed(key, done))
            if len(self._indexes) > MAX_CACHED_INDEXES:
                self._indexes.popitem(last=False)
        else:
            self._indexes.move_to_end(key)
        # Shielded: a search that goes away does not cancel the build others wait for.
        return await asyncio.shield(built)

    def _forget_failed(self, key: tuple[_SpecKey, ...], done: asyncio.Future[ToolIndex]) -> None:
        if (done.cancelled() or done.exception() is not None) and self._indexes.get(key) is done:
            del self._indexes[key]  # a failed build is not kept


# What the index reads of a spec. The catalog lists a variant as a copy of its spec under
# the listed name (`dataclasses.replace`), made anew at every list, so the spec's own id
# changes while its schema object stays the same: the schema is keyed by id, which the
# cached index (holding the specs) keeps from being reused meanwhile.
_SpecKey = tuple[str, str, int]


def _spec_key(spec: ToolSpec) -> _SpecKey:
    return (spec.name, spec.description, id(spec.input_schema))


async def _build(tools: list[ToolSpec]) -> ToolIndex:
    # Imported at the first search: most nodes never need the index.
    from vsmcp.node.vsm.s4.matcher import ToolIndex

    # Built off the event loop: over a thousand tools it takes a tenth of a second or more.
    return await asyncio.to_thread(ToolIndex, tools)


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
