"""`LocalCatalog`: the `ToolCatalog` over this node's supervised providers.

A call goes: name lookup (`UnknownTool`) -> the caller's zone (`ZoneDenied`) ->
argument schema (`InvalidArguments`) -> rate limits (`RateLimited`) -> the unit
(`ToolUnavailable`, `Overloaded`, `ToolTimeout`) -> the provider.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsmcp.mesh.certs import DEFAULT_ZONES
from vsmcp.mesh.service import Service
from vsmcp.node.tools.builtin import DataView, ProbeHandler, SignalHandler, builtin_provider
from vsmcp.node.tools.config import (
    EdgeConfig,
    RateLimitConfig,
    RateLimitsConfig,
    ToolsConfig,
    UnitLimitsConfig,
)
from vsmcp.node.tools.errors import ToolConfigError, UnknownTool
from vsmcp.node.tools.model import CallContext, ChangeCallback, Provider, ToolResult, ToolSpec
from vsmcp.node.tools.offers import client_tool_name, is_offers_tool
from vsmcp.node.tools.plugins import entry_point_providers, plugin_provider
from vsmcp.node.tools.policy import CallPolicy, zone_allows
from vsmcp.node.tools.supervisor import Supervisor, Unit, UnitPolicy

if TYPE_CHECKING:
    from vsmcp.edge.runtime import WasmRuntime
    from vsmcp.node.vsm.limits import RateLimit, RateLimiter

log = logging.getLogger(__name__)


class LocalCatalog(Service):
    """Tools of the local units, filtered and guarded by `policy`. Async context manager."""

    def __init__(self, supervisor: Supervisor | None = None, policy: CallPolicy | None = None):
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        self.policy = policy if policy is not None else CallPolicy()
        self._index: dict[str, tuple[Unit, ToolSpec]] = {}
        # The node's one WASM runtime, made when a first WASM tool is added
        # (`vsmcp.node.tools.wasm.shared_runtime`): configured and published modules share
        # its engine, instance slots, workers and epoch clock.
        self.wasm_runtime: WasmRuntime | None = None
        self.supervisor.on_change(self._reindex)
        self._reindex()

    def add(self, provider: Provider, policy: UnitPolicy | None = None) -> Unit:
        unit = self.supervisor.add(provider, policy)
        self._reindex()
        return unit

    def _reindex(self) -> None:
        index: dict[str, tuple[Unit, ToolSpec]] = {}
        for unit in self.supervisor.units.values():
            for spec in unit.known_tools():
                other = index.get(spec.name)
                if other is not None and other[0] is not unit:
                    log.warning(
                        "tool %r of unit %s hidden by unit %s", spec.name, unit.name, other[0].name
                    )
                    continue
                index[spec.name] = (unit, spec)
        self._index = index

    def available_tools(self) -> list[ToolSpec]:
        """Tools of running units, whoever asks (what this node announces to the mesh)."""
        out = []
        for unit in self.supervisor.units.values():
            for spec in unit.tools():
                entry = self._index.get(spec.name)
                if entry is not None and entry[0] is unit:
                    out.append(spec)
        return sorted(out, key=lambda s: s.name)

    def client_tools(self) -> list[ToolSpec]:
        """Tools of running units a client calls, whoever asks: not the offers tools,
        which carry resources and prompts (`node.tools.offers`)."""
        return [spec for spec in self.available_tools() if not is_offers_tool(spec.name)]

    def list_tools(self, ctx: CallContext) -> list[ToolSpec]:
        """The tools `ctx` may use (not the offers tools)."""
        return [spec for spec in self.client_tools() if self.policy.visible(spec, ctx)]

    def list_offer_tools(self, ctx: CallContext) -> list[ToolSpec]:
        """The offers tools (resources, prompts) `ctx` may use."""
        return [
            spec
            for spec in self.available_tools()
            if is_offers_tool(spec.name) and self.policy.visible(spec, ctx)
        ]

    def all_offer_tools(self) -> list[ToolSpec]:
        """Every offers tool, whoever asks (the gateway refuses one by zone)."""
        return [spec for spec in self.available_tools() if is_offers_tool(spec.name)]

    def spec(self, name: str) -> ToolSpec | None:
        entry = self._index.get(name)
        return None if entry is None else entry[1]

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any], ctx: CallContext
    ) -> ToolResult:
        """A client's call: an offers tool is unknown here (`client_tool_name`)."""
        return await self.call_any(client_tool_name(name), arguments, ctx)

    async def call_offers_tool(
        self, name: str, arguments: Mapping[str, Any], ctx: CallContext
    ) -> ToolResult:
        """A resources/prompts/completion request, as a call of the offers tool `name`."""
        if not is_offers_tool(name):
            raise UnknownTool(name)
        return await self.call_any(name, arguments, ctx)

    async def call_any(
        self, name: str, arguments: Mapping[str, Any], ctx: CallContext
    ) -> ToolResult:
        """A call of any tool, offers tools included: what another node forwards (its
        entry refused a client's call of an offers tool) and what the routing runs here."""
        entry = self._index.get(name)
        if entry is None:
            raise UnknownTool(name)
        unit, spec = entry
        self.policy.admit(spec, arguments, ctx)
        return await unit.call(name, arguments, ctx)

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        return self.supervisor.on_change(callback)

    def status(self) -> list[dict[str, Any]]:
        return self.supervisor.status()

    async def start(self) -> None:
        await self.supervisor.start()

    async def stop(self) -> None:
        await self.supervisor.stop()


# vsm.limits is imported by these (with the first configured limit), not with the
# registry: a node without rate limits never needs it. Start-time code, not a call path.


def _limit(cfg: RateLimitConfig | None) -> RateLimit | None:
    from vsmcp.node.vsm.limits import RateLimit

    return None if cfg is None else RateLimit(cfg.rate_per_s, cfg.burst)


def _peer_limit(cfg: RateLimitsConfig) -> RateLimit | None:
    """`limits.per_peer`, else `PEER_LIMIT_FACTOR` times `limits.per_origin`."""
    from vsmcp.node.vsm.limits import PEER_LIMIT_FACTOR, RateLimit

    if cfg.per_peer is not None or cfg.per_origin is None:
        return _limit(cfg.per_peer)
    origin = cfg.per_origin
    return RateLimit(origin.rate_per_s * PEER_LIMIT_FACTOR, origin.burst * PEER_LIMIT_FACTOR)


def rate_limiter(cfg: RateLimitsConfig) -> RateLimiter | None:
    """`None` when no limit is configured at all.

    `limits.origins` names exact keys: a local origin (`http:ci`), an entry node
    (`mesh:<node id>`, its per-peer bucket) or one caller behind it
    (`mesh:<node id>/http:ci`).
    """
    if not (cfg.per_origin or cfg.per_tool or cfg.per_peer or cfg.origins or cfg.tools):
        return None
    from vsmcp.node.vsm.limits import BucketMap, RateLimit, RateLimiter

    origins = {k: RateLimit(v.rate_per_s, v.burst) for k, v in cfg.origins.items()}
    return RateLimiter(
        per_origin=BucketMap(_limit(cfg.per_origin), origins, max_buckets=cfg.max_buckets),
        per_tool=BucketMap(
            _limit(cfg.per_tool),
            {k: RateLimit(v.rate_per_s, v.burst) for k, v in cfg.tools.items()},
            max_buckets=cfg.max_buckets,
        ),
        per_peer=BucketMap(_peer_limit(cfg), origins, max_buckets=cfg.max_buckets),
        per_peer_origin=BucketMap(_limit(cfg.per_origin), origins, max_buckets=cfg.max_buckets),
    )


def unit_policy(cfg: ToolsConfig, limits: UnitLimitsConfig | None = None) -> UnitPolicy:
    sup = cfg.supervision
    limits = limits or UnitLimitsConfig()
    return UnitPolicy(
        max_concurrency=limits.max_concurrency or cfg.max_concurrency,
        max_queue=cfg.max_queue if limits.max_queue is None else limits.max_queue,
        timeout_s=limits.timeout_s or cfg.timeout_s,
        backoff_initial_s=sup.backoff_initial_s,
        backoff_max_s=sup.backoff_max_s,
        backoff_reset_s=sup.backoff_reset_s,
        crash_loop_failures=sup.crash_loop_failures,
        crash_loop_window_s=sup.crash_loop_window_s,
        quarantine_s=sup.quarantine_s,
        stop_timeout_s=sup.stop_timeout_s,
    )


def build_local_catalog(
    tools: ToolsConfig,
    limits: RateLimitsConfig | None = None,
    *,
    zones: Sequence[str] = DEFAULT_ZONES,
    status: DataView | None = None,
    peers: DataView | None = None,
    tools_view: DataView | None = None,
    signal: SignalHandler | None = None,
    signal_zone: str = "restricted",
    probe: ProbeHandler | None = None,
    edge: EdgeConfig | None = None,
    wasm_cache_dir: Path | None = None,
) -> LocalCatalog:
    """The catalog the node runs: built-ins, config plugins, entry points, mounts, WASM
    tools (`wasm_cache_dir`: where compiled modules are kept; None: in memory only).

    Raises `ToolConfigError` for a plugin target that does not import. Not started:
    use it as an async context manager (or `start()`/`stop()`).
    """
    policy = CallPolicy(
        allows=zone_allows(zones),
        limiter=rate_limiter(limits) if limits is not None else None,
    )
    catalog = LocalCatalog(Supervisor(), policy)
    default = unit_policy(tools)
    catalog.add(
        builtin_provider(
            status=status,
            peers=peers,
            tools=tools_view,
            introspection_zone=tools.introspection_zone,
            signal=signal,
            signal_zone=signal_zone,
            probe=probe,
        ),
        default,
    )
    for i, plugin in enumerate(tools.plugins):
        provider = plugin_provider(plugin, f"tools.plugins[{i}]")
        catalog.add(provider, unit_policy(tools, plugin.limits))
    if tools.entry_points:
        for provider in entry_point_providers():
            catalog.add(provider, default)
    if tools.mounts:
        _add_mounts(catalog, tools)
    if tools.wasm:
        _add_wasm_tools(catalog, tools, edge or EdgeConfig(), wasm_cache_dir)
    return catalog


def _add_mounts(catalog: LocalCatalog, tools: ToolsConfig) -> None:
    # Imported here: a node without mounts never loads their client side (the stdio
    # transport, the MCP client session, resources and prompts).
    from vsmcp.node.tools.mounted import MountedServer

    for mount in tools.mounts:
        catalog.add(MountedServer(mount, tools.max_result_bytes), unit_policy(tools, mount.limits))


def _add_wasm_tools(
    catalog: LocalCatalog, tools: ToolsConfig, edge: EdgeConfig, cache_dir: Path | None
) -> None:
    # Imported here: a node without WASM tools never loads the runtime (nor wasmtime).
    from vsmcp.edge.errors import EdgeError
    from vsmcp.edge.manifest import load_manifest
    from vsmcp.node.tools.wasm import WasmProvider, edge_permissions, shared_runtime

    try:
        runtime = shared_runtime(catalog, edge, cache_dir)
    except EdgeError as exc:
        raise ToolConfigError(f"tools.wasm: {exc}") from exc
    permissions = edge_permissions(edge)
    for i, wasm in enumerate(tools.wasm):
        try:
            manifest = load_manifest(Path(wasm.manifest), permissions)
        except EdgeError as exc:
            raise ToolConfigError(f"tools.wasm[{i}].manifest: {exc}") from exc
        catalog.add(WasmProvider(manifest, runtime), unit_policy(tools, wasm.limits))
