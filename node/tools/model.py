"""The tool model: what a tool is, the context a call carries, and the catalog interface.

`ToolCatalog` is what the MCP gateway (HTTP and stdio) talks to. `LocalCatalog`
(`node.tools.registry`) implements it over this node's providers; a mesh catalog
wraps it with the same interface to add other nodes' tools.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, runtime_checkable

from vsmcp.node.vsm.priority import DEFAULT_PRIORITY, Priority

if TYPE_CHECKING:
    from vsmcp.node.tools.client_channel import ClientChannel
    from vsmcp.node.tools.config import ProbeConfig

ProviderKind = Literal["builtin", "plugin", "mounted", "wasm", "child", "remote"]

ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]
"""`progress(progress, total, message)`: forwards a progress notification to the caller."""

ToolResult = dict[str, Any]
"""A `CallToolResult`-shaped dict: `content` (list), `isError`, optional `structuredContent`."""

EMPTY_OBJECT_SCHEMA: Mapping[str, Any] = {"type": "object", "properties": {}}

# A call's trace in a request's `_meta`: read by the gateway from clients, and sent on
# to mounted MCP servers (another vsmcp node behind a mount continues the same trace).
META_TRACE_ID: Final = "vsmcp/traceId"
META_CAUSALITY: Final = "vsmcp/causality"
META_ORIGIN: Final = "vsmcp/origin"
# A client pins a call to one node (its id or name) in the request's `_meta`.
META_NODE: Final = "vsmcp/node"
# A client names its call's priority class (`node.vsm.priority`) in the request's `_meta`.
META_PRIORITY: Final = "vsmcp/priority"


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolSpec:
    """One tool as callers see it. `name` is unique on the node (mounted tools are namespaced)."""

    name: str
    description: str = ""
    input_schema: Mapping[str, Any] = field(default_factory=lambda: dict(EMPTY_OBJECT_SCHEMA))
    zone: str = "public"
    provider: ProviderKind = "builtin"
    annotations: Mapping[str, Any] | None = None
    output_schema: Mapping[str, Any] | None = None
    title: str | None = None
    execution: Mapping[str, Any] | None = None

    def metadata(self) -> dict[str, Any]:
        """The MCP `Tool` fields past name, description and input schema that it has
        (what the registry carries as an entry's metadata)."""
        out: dict[str, Any] = {}
        if self.title:
            out["title"] = self.title
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.output_schema:
            out["outputSchema"] = dict(self.output_schema)
        if self.execution:
            out["execution"] = dict(self.execution)
        return out

    def with_metadata(self, metadata: Mapping[str, Any]) -> ToolSpec:
        """This spec with the fields `metadata()` names, taken from `metadata` (one
        received from another node: a field of the wrong type is left out)."""
        title = metadata.get("title")
        return replace(
            self,
            title=title if isinstance(title, str) else None,
            annotations=_object_or_none(metadata.get("annotations")),
            output_schema=_object_or_none(metadata.get("outputSchema")),
            execution=_object_or_none(metadata.get("execution")),
        )

    def to_mcp(self) -> dict[str, Any]:
        """The MCP `Tool` object for `tools/list`."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "inputSchema": dict(self.input_schema),
        }
        out.update(self.metadata())
        out["_meta"] = {"vsmcp/zone": self.zone, "vsmcp/provider": self.provider}
        return out


def _object_or_none(value: object) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) and value else None


def new_trace_id() -> str:
    # 32 hex digits like uuid4().hex. Not a secret, so no getrandom() syscall per call
    # (≈10 µs on a VM): Python's Mersenne Twister, seeded from the OS at start.
    return f"{random.getrandbits(128):032x}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallContext:
    """Who calls, from where, and the call's budget.

    `origin` names the entry point: `http:<token name>`, `http:loopback`, `stdio`,
    `mesh:<node id>`. For a call that came over the mesh, `entry_origin` is the origin
    the entry node named for its caller (a claim of that node: rate limits key on the
    pair, under a cap for the whole entry node). `deadline` is on the event loop's clock
    (`loop.time()`).
    """

    caller_id: str
    caller_zone: str
    origin: str
    trace_id: str = field(default_factory=new_trace_id)
    causality: tuple[str, ...] = ()
    progress: ProgressFn | None = None
    deadline: float | None = None
    entry_origin: str | None = None
    # The HTTP client's address at the entry node (`addr:<ip>` mitigations), if any.
    client_addr: str | None = None
    # The node the caller pinned this call to (`_meta` `vsmcp/node`: id or name), if any.
    pinned_node: str | None = None
    # Who is refused first under load (`node.vsm.priority`): already capped by the grant.
    priority: Priority = DEFAULT_PRIORITY
    # The way back to the calling client (logs, sampling, elicitation, roots), if any.
    client: ClientChannel | None = None

    async def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        if self.progress is not None:
            await self.progress(progress, total, message)

    def remaining_s(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - asyncio.get_running_loop().time()

    def with_timeout(self, timeout_s: float | None) -> CallContext:
        """This context with its deadline tightened to at most `timeout_s` from now."""
        if timeout_s is None:
            return self
        deadline = asyncio.get_running_loop().time() + timeout_s
        if self.deadline is not None and self.deadline <= deadline:
            return self
        # Not dataclasses.replace: this runs on every call and replace() costs ≈6 µs.
        return CallContext(
            caller_id=self.caller_id,
            caller_zone=self.caller_zone,
            origin=self.origin,
            trace_id=self.trace_id,
            causality=self.causality,
            progress=self.progress,
            deadline=deadline,
            entry_origin=self.entry_origin,
            client_addr=self.client_addr,
            pinned_node=self.pinned_node,
            priority=self.priority,
            client=self.client,
        )

    def with_priority(self, priority: Priority) -> CallContext:
        return self if priority == self.priority else replace(self, priority=priority)

    def caused_by(self, event_id: str) -> CallContext:
        return replace(self, causality=(*self.causality, event_id))


ChangeCallback = Callable[[], None]


class ToolCatalog(Protocol):
    """What the MCP gateway needs: the tools a caller may use, calls, and change events."""

    def list_tools(self, ctx: CallContext) -> list[ToolSpec]:
        """Only the tools `ctx`'s caller may call right now."""
        ...

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any], ctx: CallContext
    ) -> ToolResult:
        """Run a tool; raises `node.tools.errors.ToolError` subclasses for refusals."""
        ...

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call `callback` whenever the tool list may have changed; returns an unsubscribe."""
        ...


@runtime_checkable
class DeclaresProbe(Protocol):
    """A provider whose tools carry their own System 3* probe (a WASM module's manifest
    `[probe]`), beside those of the config."""

    @property
    def declared_probe(self) -> ProbeConfig | None: ...


class Provider(Protocol):
    """A System 1 unit that provides tools, run by `node.tools.supervisor.Supervisor`.

    `run` starts the provider, calls `ready()` once its tools can be called, then
    returns when `stop` is set. Returning before `stop` is set, or raising, is a crash.
    """

    @property
    def name(self) -> str: ...

    def tools(self) -> Sequence[ToolSpec]: ...

    async def run(self, ready: Callable[[], None], stop: asyncio.Event) -> None: ...

    async def call(
        self, tool: str, arguments: Mapping[str, Any], ctx: CallContext
    ) -> ToolResult: ...


def text_result(text: str, *, is_error: bool = False) -> ToolResult:
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


def to_result(value: Any) -> ToolResult:
    """Turn what a plugin returned into a `CallToolResult`-shaped dict.

    A dict with `content` is taken as a result already; a string becomes text; other
    JSON values become text plus `structuredContent` (objects only, as MCP requires).
    """
    if isinstance(value, Mapping) and isinstance(value.get("content"), list):
        result = dict(value)
        result.setdefault("isError", False)
        return result
    if isinstance(value, str):
        return text_result(value)
    text = json.dumps(value, separators=(",", ":"), default=str)
    result = text_result(text)
    if isinstance(value, Mapping):
        result["structuredContent"] = dict(value)
    return result
