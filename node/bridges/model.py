"""What every bridge is and what it may use of the node."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.metrics import NodeMetrics
from vsmcp.node.vsm.stream import EventStream

BridgeState = Literal["connecting", "connected", "down", "stopped"]


class BridgeStatus(msgspec.Struct, kw_only=True):
    """One bridge's state, as `/api/vsm` (`bridges`) and `/metrics` show it."""

    name: str
    state: BridgeState = "connecting"
    # What is waiting to leave (an outbox, a mirror behind its source): entries.
    outbox_depth: int = 0
    # How far behind the bridge is, in entries (0 when it is caught up).
    lag: int = 0
    errors: int = 0
    last_error: str = ""
    # Unix time of the last change of `state`.
    since: float = 0.0
    # Bridge-specific counters (published, received, replies, dead-lettered, ...).
    counters: dict[str, int] = msgspec.field(default_factory=dict)

    @property
    def connected(self) -> bool:
        return self.state == "connected"


class Bridge(Protocol):
    """A running bridge. `start` must return promptly even when its peer is unreachable
    (the connection is made and remade by its own supervised loop)."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def __aenter__(self) -> Bridge: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def status(self) -> BridgeStatus: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeContext:
    """The parts of the node a bridge may use; nothing else reaches it.

    `tools` is the node's mesh catalog (`vsmcp.node.routing.catalog.MeshCatalog`):
    `await tools.call_tool(name, arguments, CallContext(...))` runs a call anywhere on
    the mesh under the caller's zone and limits; `tools.list_tools(ctx)` lists what a zone
    sees. Typed `Any` here so that importing this module imports no routing.
    """

    node_id: str
    node_name: str
    data_dir: Path
    # The zones of this mesh, lowest first (trust.zones), for checking configured mappings.
    zones: tuple[str, ...]
    events: EventStream
    loops: LoopSupervisor
    metrics: NodeMetrics
    tools: Any
    # The replicated state (`vsmcp.crdt`'s MeshState): tools, policies, context graph.
    state: Any
    # The node's SQLite store (`vsmcp.node.store.database.Store`) and audit log.
    store: Any
    audit_log: Any
    # `audit(kind, data)`: append an audit entry without waiting for it.
    audit: Callable[[str, Mapping[str, Any]], None]
    # `pain(source, intensity, reason)`: a signal on the algedonic channel (never raises).
    pain: Callable[[str, float, str], None]
    # System 4's planner (node/vsm/s4): `await planner.answer(text, ctx)`; None if absent.
    planner: Any = None
    # The node's key (a crdt `Signer`), for what a bridge records in `state.graph`.
    signer: Any = None
