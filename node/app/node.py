"""The node: one service that composes identity, store, audit, envelope pipeline and HTTP.

Start order: identity → store → audit → replay guard → HTTP; stop runs in reverse, so
the HTTP server stops taking work before the audit log is flushed and the store closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from vsmcp.crdt.errors import CrdtError
from vsmcp.mesh.certs import ZoneOrder, encode_certificate
from vsmcp.mesh.envelope import Opener, Sealer, wall_clock_ms
from vsmcp.mesh.errors import MeshError
from vsmcp.mesh.identity import node_id_from_public_key
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.mesh.membership import MemberReaped, MemberStateChanged
from vsmcp.mesh.replay import ReplayGuard
from vsmcp.mesh.service import Service
from vsmcp.mesh.transport import TransportError
from vsmcp.node import __version__
from vsmcp.node.app.children_api import ChildrenApi
from vsmcp.node.app.config import Config
from vsmcp.node.app.descriptors import MIN_FREE_DESCRIPTORS, descriptor_usage, descriptors_exhausted
from vsmcp.node.app.immune_links import link_node_blocks, quorum_members
from vsmcp.node.app.policy_links import reconsider_on_admit
from vsmcp.node.app.s4_api import S4Api
from vsmcp.node.app.trust import NodeIdentity, certificate_path, ensure_data_dir, load_identity
from vsmcp.node.app.vsm_systems import MeshFacts, VsmSystems
from vsmcp.node.app.zone_auth import authorize
from vsmcp.node.bridges.model import BridgeContext
from vsmcp.node.bridges.service import BridgesService
from vsmcp.node.children.manager import ChildManager, ParentTrust
from vsmcp.node.children.tools import children_provider
from vsmcp.node.errors import ConfigError, NodeError, StartupError
from vsmcp.node.http.limits import REFUSE_REASONS, ConnectionLimits
from vsmcp.node.http.policy import RequestPolicy, is_wildcard_address, local_http_url
from vsmcp.node.http.server import HttpServer
from vsmcp.node.http.status_page import PageHub
from vsmcp.node.mcp.client_requests import COUNTED_OUTCOMES
from vsmcp.node.mcp.http import TokenGrant, register_mcp_routes
from vsmcp.node.mcp.stdio_auth import ensure_stdio_token
from vsmcp.node.metrics import NodeMetrics
from vsmcp.node.peers.service import (
    MDNS_STATES,
    MEMBERSHIP_PRESETS,
    MeshService,
    parent_node_id,
)
from vsmcp.node.replication.service import ReplicationService
from vsmcp.node.routing.calls import COUNTED_EVENTS as MESH_CALL_EVENTS
from vsmcp.node.routing.catalog import MeshCatalog
from vsmcp.node.routing.client_relay import RELAY_OUTCOMES
from vsmcp.node.routing.gray_exchange import GrayExchange, gray_issuers
from vsmcp.node.store.audit import AuditLog
from vsmcp.node.store.audit_anchor import AuditAnchor
from vsmcp.node.store.audit_head import head_file_for
from vsmcp.node.store.database import Store
from vsmcp.node.tool_call_metrics import RefusalTimes, ToolCallMetrics
from vsmcp.node.tools.client_channel import MOUNT_CLIENT_OUTCOMES
from vsmcp.node.tools.config import STDIO_GRANT_NAME
from vsmcp.node.tools.debug import DebugTools
from vsmcp.node.tools.model import CallContext
from vsmcp.node.tools.offers import is_offers_tool
from vsmcp.node.tools.registry import LocalCatalog, build_local_catalog
from vsmcp.node.vsm.audits import Auditor
from vsmcp.node.vsm.errors import PatternError, VsmError
from vsmcp.node.vsm.events import NODE_CATALOG, Event, MembershipChanged, ToolCallFinished
from vsmcp.node.vsm.immune.model import IMMUNE_KINDS, immune_issuers
from vsmcp.node.vsm.immune.patterns import SOURCE as IMMUNE_SOURCE
from vsmcp.node.vsm.immune.patterns import immune_patterns
from vsmcp.node.vsm.immune.service import ImmuneService
from vsmcp.node.vsm.patterns.actions import ActionDispatcher
from vsmcp.node.vsm.patterns.service import PatternService, ToolCaller
from vsmcp.node.vsm.priority import PRIORITY_CLASSES
from vsmcp.node.vsm.s4.planner import Planner
from vsmcp.node.vsm.s4.scan import EnvironmentScan, ScanInputs
from vsmcp.node.vsm.stream import EventStream
from vsmcp.node.vsm.viability import factors as viability_factors
from vsmcp.node.vsm.viability import input_gauges as viability_input_gauges
from vsmcp.node.wasmdist.model import PUBLISH_REQUEST_SLACK_BYTES, any_of, publisher_issuers
from vsmcp.node.wasmdist.service import WasmDistribution

if TYPE_CHECKING:
    from vsmcp.node.app.cert_reload import CertificateReloader
    from vsmcp.node.vsm.concurrency import AdaptiveLimiter

log = logging.getLogger(__name__)

LOCK_FILE_NAME = "vsmcpd.lock"
RUNTIME_FILE_NAME = "runtime.json"
KV_REPLAY_GUARD = "replay_guard"
KV_RUN_STATE = "run_state"
# The future-skew bound the running (or crashed) process accepted envelopes under.
KV_REPLAY_FUTURE_MS = "replay_future_ms"
RUN_STATE_RUNNING = b"running"
RUN_STATE_CLEAN = b"clean"
KV_SEALER_SEQ = "sealer_next_seq"
ENVELOPE_REJECT_REASONS = (
    "oversize",
    "malformed",
    "bad_version",
    "bad_signature",
    "stale",
    "future",
    "replay",
    "too_old",
    "recipient",
)


_KIND_NAMES = {kind.cls: name for name, kind in NODE_CATALOG.kinds.items()}


class PolicyRecordRefused(NodeError):
    """A policy record posted to the node that does not verify."""


def _roles_of(identity: NodeIdentity, mesh: MeshService, key: bytes) -> tuple[str, ...] | None:
    """The roles of our certificate, or of the admitted peer holding `key`."""
    if key == identity.key.public_key:
        return identity.certificate.roles
    peer = mesh.peers.get(node_id_from_public_key(key))
    return None if peer is None else peer.certificate.roles


def _policy_issuers(identity: NodeIdentity, mesh: MeshService) -> Callable[[bytes, str], bool]:
    """Who may issue what in the policies CRDT (besides the authority): immune policies
    from `immune` members, WASM module manifests from `publisher` members, gray-failure
    observations from any member."""

    def roles(key: bytes) -> tuple[str, ...] | None:
        return _roles_of(identity, mesh, key)

    return any_of(immune_issuers(roles), publisher_issuers(roles), gray_issuers(roles))


class DebugApiDisabled(NodeError):
    """A /api/debug call on a node without node.debug_api, or with bad arguments."""


class Node(Service):
    """A running vsmcp node. `async with Node(config) as node:` starts and stops it."""

    def __init__(self, config: Config, *, accept_audit_rollback: bool = False) -> None:
        self.config = config
        # An operator's one-off word (`vsmcpd --accept-audit-rollback`), not config: kept
        # in a file, it would silence the rollback check for good.
        self._accept_audit_rollback = accept_audit_rollback
        # Set when the node must stop and not be restarted as it is (exit 2): its audit
        # log went backwards behind what the mesh saw.
        self.fatal = asyncio.Event()
        self.fatal_error: str | None = None
        self.metrics = NodeMetrics()
        # Every background loop of the node runs under it: restarted, or the node unhealthy.
        self.loops = LoopSupervisor()
        self._stack: contextlib.AsyncExitStack | None = None
        self._started_monotonic = 0.0
        self._identity: NodeIdentity | None = None
        # Outside dev mode: takes a renewed certificate file without a restart.
        self._cert_reloader: CertificateReloader | None = None
        self._audit: AuditLog | None = None
        self._store: Store | None = None
        self._opener: Opener | None = None
        self._http: HttpServer | None = None
        self._mesh: MeshService | None = None
        self._catalog: LocalCatalog | None = None
        self._replication: ReplicationService | None = None
        self._anchor: AuditAnchor | None = None
        self._tools: MeshCatalog | None = None
        self._gray_exchange: GrayExchange | None = None
        self._debug_tools = DebugTools()
        self.children = ChildrenApi(
            config.data_dir, config.recursion, ZoneOrder(config.trust.zones)
        )
        # The immune system (System 5), once started; the Mitigator S5's rules call.
        self.immune: ImmuneService | None = None
        self.wasm: WasmDistribution | None = None
        # The configured bridges (none by default), once started.
        self.bridges: BridgesService | None = None
        # System 4: the planner and the environment scan, once the mesh catalog runs.
        self.s4 = S4Api()
        self._audit_tasks: set[asyncio.Task[None]] = set()
        self._out_of_descriptors = False
        # The node's one event stream: every component publishes into it (never
        # blocking); the pattern engine, metrics and other services subscribe.
        vsm = config.vsm
        self.events = EventStream()
        self._event_counts: Counter[str] = Counter()
        self._tool_calls = ToolCallMetrics(self.metrics)
        self._refusal_times = RefusalTimes(self.metrics)
        self.events.subscribe("metrics", self._count_events, capacity=vsm.event_buffer)
        # The status page's feed (`/api/stream`) and recent events (`/api/events`).
        self.page = PageHub(self.events, max_clients=config.http.max_page_clients)
        # What pattern matches do: other services register their action handlers here
        # (`algedonic`, `policy`/`mitigate`) before or after start.
        self.actions = ActionDispatcher()
        self.patterns = PatternService(
            self.events,
            actions=self.actions,
            directory=Path(vsm.patterns_dir).expanduser() if vsm.patterns_dir else None,
            poll_interval_s=vsm.patterns_poll_s,
            capacity=vsm.event_buffer,
            loops=self.loops,
        )
        # The algedonic channel, System 3's aggregate and KPIs, System 5's responses,
        # viability: wired to the catalog and mesh once they exist (`_start_vsm`).
        self.vsm = VsmSystems(config, self.events, self.loops, self._audit_s5)
        # System 3*: sporadic audits of the units; bound to them in _start_local_catalog.
        self.audits = Auditor(
            vsm.audits,
            self.loops,
            zone=config.trust.zones[-1],
            events=self.events,
            audit=self._audit_s5,
            pain=self._raise_pain,
        )
        self.actions.register("algedonic", self.vsm.on_pattern_match)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._stack is not None:
            return
        stack = contextlib.AsyncExitStack()
        try:
            await self._start_parts(stack)
        except BaseException as e:
            await stack.aclose()
            if isinstance(e, NodeError) and not isinstance(e, StartupError):
                # A damaged store or audit log: the operator must look before we go on.
                raise StartupError(str(e)) from e
            raise
        self._stack = stack

    async def _start_parts(self, stack: contextlib.AsyncExitStack) -> None:
        data_dir = self.config.data_dir
        ensure_data_dir(data_dir)
        stack.enter_context(_exclusive_lock(data_dir / LOCK_FILE_NAME))
        identity = load_identity(self.config)
        self._identity = identity
        # Entered first, so it stops last: subscribers see what the other parts published
        # while they stopped.
        await stack.enter_async_context(self.events)
        store = await stack.enter_async_context(Store.open(data_dir))
        self._store = store
        audit_cfg = self.config.audit
        audit = AuditLog(
            store,
            sign=identity.key.sign_detached,
            public_key=identity.key.public_key,
            batch_size=audit_cfg.batch_size,
            queue_maxsize=audit_cfg.queue_size,
            loops=self.loops,
            linger_s=audit_cfg.linger_ms / 1000,
            head_file=head_file_for(data_dir),
            accept_rollback=self._accept_audit_rollback,
        )
        await stack.enter_async_context(audit)
        self._audit = audit
        stack.push_async_callback(self._audit_stop)
        guard = await self._restore_replay_guard(store)
        stack.push_async_callback(self._save_replay_guard, store, guard)
        self._opener = Opener(
            guard,
            max_size=self.config.envelope.max_bytes,
            local_public_key=identity.key.public_key,
        )
        sealer = await self._sealer(store, identity, stack)
        self._register_metrics()
        catalog = await self._start_local_catalog(stack)
        mesh = self._mesh_service(identity, sealer)
        self._mesh = mesh
        replication = ReplicationService(
            allowed_issuers=_policy_issuers(identity, mesh),
            key=identity.key,
            authority_public_key=identity.authority_public_key,
            mesh=mesh,
            store=store,
            local_tools=catalog.available_tools,
            max_envelope_bytes=self.config.envelope.max_bytes,
            loops=self.loops,
            events=self.events,
            max_policies_per_issuer=self.config.replication.max_policies_per_issuer,
        )
        self._replication = replication
        self.patterns.enable_tool_action(self._pattern_tool_caller(catalog, identity))
        await self._start_patterns(stack)
        tools = MeshCatalog(
            local=catalog,
            mesh=mesh,
            replication=replication,
            node_id=identity.node_id,
            zones=identity.zones,
            audit=audit,
            call_timeout_s=self.config.tools.timeout_s,
            commit_before_answer=audit_cfg.commit_before_answer,
            loops=self.loops,
            events=self.events,
            node_name=self.config.node.name,
            gray=self.config.vsm.gray,
        )
        self._tools = tools
        await self._start_vsm(stack, catalog, tools, mesh, replication)
        http_cfg = self.config.http
        http = HttpServer(
            self,
            http_cfg.host,
            http_cfg.port,
            ConnectionLimits(
                max_connections=http_cfg.max_connections,
                max_per_client=http_cfg.max_connections_per_client,
                head_timeout_s=http_cfg.head_timeout_s,
                body_idle_timeout_s=http_cfg.body_idle_timeout_s,
            ),
            RequestPolicy(self._allowed_hosts(), self.config.mcp.allowed_origins),
            self.page,
        )
        self._register_mcp(http, tools)
        try:
            await http.start()
        except OSError as e:
            raise _bind_error("http", self.config.http.host, self.config.http.port, e) from e
        stack.push_async_callback(http.stop)
        self._http = http
        self.page.start_vsm_push(self.loops, self.vsm_view)
        stack.push_async_callback(self.page.stop_vsm_push)
        self._register_http_metrics(http)
        # The node blocks the snapshot holds cut their targets' links before the mesh
        # admits anyone (`mesh.refuses` is the immune system's answer from the start).
        await replication.restore_snapshot()
        self._start_immune(identity, mesh, replication, tools)
        # What the snapshot holds from issuers not admitted yet is judged when they are.
        reconsider_on_admit(mesh, replication.state.policies)
        # The mesh advertises the HTTP port, so it starts once that is bound.
        mesh.http_port = http.port
        try:
            await stack.enter_async_context(mesh)
        except TransportError as e:
            if e.reason != "bind":
                raise
            cfg = self.config.mesh
            raise _bind_error("mesh", cfg.host, cfg.port, e.__cause__ or e) from e
        self._register_mesh_metrics(mesh)
        self._anchor = await stack.enter_async_context(
            AuditAnchor(
                mesh=mesh,
                audit=audit,
                store=store,
                key=identity.key,
                accept_rollback=self._accept_audit_rollback,
                on_rollback=self._refuse_to_go_on,
                loops=self.loops,
            )
        )
        self._register_anchor_metrics(self._anchor)
        await stack.enter_async_context(replication)
        # After the snapshot is restored: what it holds is read once, the rest arrives.
        self.patterns.watch_policies(replication.state.policies, [identity.authority_public_key])
        await self._start_gray_exchange(stack, identity, mesh, replication, tools)
        self.metrics.add_counters(
            "vsmcp_replication_events",
            "Registry replication events (sent, received, anti-entropy rounds, rejections)",
            "event",
            lambda: dict(replication.stats),
        )
        self.metrics.add_counters(
            "vsmcp_policies_over_cap",
            "Policies CRDT records refused or evicted by replication.max_policies_per_issuer",
            "kind",
            lambda: dict(replication.state.policies.over_cap),
        )
        catalog.on_change(replication.announce_local_tools)
        await stack.enter_async_context(tools)
        self.wasm = await stack.enter_async_context(
            self._wasm_distribution(identity, catalog, mesh, replication)
        )
        # System 3*'s rounds call units and peers: they stop before the catalog and mesh.
        if self.config.vsm.audits.enabled:
            await stack.enter_async_context(self.audits)
        self.s4.planner = Planner(
            tools, self.config.trust.zones, self.config.vsm.s4, self.config.llm
        )
        stack.push_async_callback(self.s4.planner.aclose)
        self.bridges = await stack.enter_async_context(
            BridgesService(
                self.config.bridges,
                self._bridge_context(identity, tools, replication, store, audit),
            )
        )
        self.s4.scan = await stack.enter_async_context(self._environment_scan(mesh, replication))
        if self.config.vsm.alert_telegram_chat:
            await self._start_alert_relay(stack, identity, tools)
        self._started_monotonic = time.monotonic()
        self.metrics.set_up(True, start_time=time.time())
        _write_runtime_file(data_dir / RUNTIME_FILE_NAME, self.runtime_info())
        stack.callback(_remove, data_dir / RUNTIME_FILE_NAME)
        # First thing at shutdown (the stack unwinds backwards; only the children stop
        # before): calls in flight end with "shutting down", so that a hung tool cannot
        # hold the HTTP server's stop, nor an /api/ask the planner's.
        stack.callback(tools.cancel_calls)
        await audit.append("node.start", identity.node_id, self.runtime_info())
        # Last, so it stops first: children end while the mesh still runs.
        self.children.manager = await stack.enter_async_context(
            self._child_manager(identity, mesh, replication)
        )
        await self._start_scaler(stack, catalog, tools)
        if not identity.dev:
            # Imported here: a dev node (self-certified) has no certificate file to watch.
            from vsmcp.node.app.cert_reload import CertificateReloader

            self._cert_reloader = await stack.enter_async_context(
                CertificateReloader(
                    self.loops, certificate_path(self.config), lambda: self.identity,
                    lambda renewed: self._take_certificate(renewed, mesh),
                )
            )  # fmt: skip

    def _bridge_context(
        self,
        identity: NodeIdentity,
        tools: MeshCatalog,
        replication: ReplicationService,
        store: Store,
        audit: AuditLog,
    ) -> BridgeContext:
        return BridgeContext(
            node_id=identity.node_id,
            node_name=self.config.node.name or identity.node_id[-8:],
            data_dir=self.config.data_dir,
            zones=tuple(self.config.trust.zones),
            events=self.events,
            loops=self.loops,
            metrics=self.metrics,
            tools=tools,
            state=replication.state,
            store=store,
            audit_log=audit,
            audit=lambda kind, data: self._audit_nowait(kind, identity.node_id, dict(data)),
            pain=self._raise_pain,
            planner=self.s4.planner,
            signer=identity.key,
        )

    async def _start_gray_exchange(
        self,
        stack: contextlib.AsyncExitStack,
        identity: NodeIdentity,
        mesh: MeshService,
        replication: ReplicationService,
        tools: MeshCatalog,
    ) -> None:
        """Signed gray-failure observations over the mesh, and their quorum."""
        exchange = GrayExchange(
            self.loops,
            policies=replication.state.policies,
            signer=identity.key,
            config=self.config.vsm.gray,
            alive=quorum_members(mesh),
            quorum_max=MEMBERSHIP_PRESETS[self.config.mesh.preset]().quorum_max,
            on_quorum=tools.quorum_changed,
        )
        tools.on_gray_change = exchange.local_changed
        self._gray_exchange = exchange
        await stack.enter_async_context(exchange)
        self.metrics.add_counters(
            "vsmcp_gray_observations",
            "Signed gray-failure observations: published, refreshed, revoked, rate_limited, "
            "over_cap, crdt_refused, bad_bodies",
            "event",
            lambda: dict(exchange.stats),
        )

    def _register_gray_metrics(self, tools: MeshCatalog) -> None:
        gray = tools.gray
        self.metrics.add_counters(
            "vsmcp_gray_events",
            "Gray failures seen by this caller: calls judged good/bad, (provider, tool)s "
            "degraded and recovered, probes ok/failed, released (no probe, after hold_s)",
            "event",
            lambda: dict(gray.stats),
            known=("good", "bad", "degraded", "recovered", "probes_ok", "probes_failed"),
        )

        def degraded() -> dict[str, float]:
            return {"local": len(gray.locally_degraded()), "quorum": len(gray.quorum)}

        self.metrics.add_gauges(
            "vsmcp_gray_degraded",
            "(provider, tool)s this node routes around: seen here (local) or by a quorum",
            "scope",
            degraded,
            known=("local", "quorum"),
        )
        self.metrics.add_counters(
            "vsmcp_s3_audits",
            "System 3* audits: rounds, passed, failed, quarantined, vsm.probe requests "
            "and refusals, peers' tools probed (peer_passed, peer_failed)",
            "event",
            lambda: dict(self.audits.stats),
            known=("rounds", "passed", "failed", "quarantined"),
        )

    def _bind_audits(self, catalog: LocalCatalog) -> None:
        """System 3*'s probes: per plugin tool, and per mount (its tool list, plus a call
        of `probe.tool` when named)."""
        tools = self.config.tools
        probes = {p.name: p.probe for p in tools.plugins if p.probe is not None}
        listed = []
        for mount in tools.mounts:
            if mount.probe is None:
                continue
            listed.append(mount.unit_name)
            if mount.probe.tool:
                probes[mount.tool_name(mount.probe.tool)] = msgspec.structs.replace(
                    mount.probe, tool=""
                )
        self.audits.bind(catalog.supervisor, probes, listed)

    def _raise_pain(self, source: str, intensity: float, reason: str) -> None:
        """Pain on the algedonic channel from a part of the node (bridges, S3*)."""
        try:
            self.vsm.channel.raise_signal(source, "pain", intensity, reason[:500])
        except VsmError as e:
            log.warning("signal from %s dropped: %s", source, e)

    def _environment_scan(
        self, mesh: MeshService, replication: ReplicationService
    ) -> EnvironmentScan:
        kpis = self.vsm.kpis

        def tools() -> dict[str, frozenset[str]]:
            out: dict[str, set[str]] = {}
            for tool in replication.tools():
                out.setdefault(tool.name, set()).add(tool.provider)
            return {name: frozenset(providers) for name, providers in out.items()}

        def peers() -> dict[str, str]:
            return {node: mesh.member_state(node) or "unknown" for node in list(mesh.peers)}

        def bridges() -> dict[str, str]:
            statuses = self.bridges.statuses() if self.bridges is not None else {}
            return {name: status.state for name, status in statuses.items()}

        def call_kpis() -> tuple[float, float | None]:
            now = time.time()
            return kpis.error_ratio(now), kpis.latency_ms(now, 95)

        return EnvironmentScan(
            ScanInputs(
                peers=peers,
                tools=tools,
                kpis=call_kpis,
                latency_objective_ms=self.config.vsm.latency_objective_ms,
                bridges=bridges,
            ),
            self.config.vsm.s4,
            self.events,
            self.loops,
            explainer=self.s4.planner.explain if self.s4.planner is not None else None,
        )

    async def _start_alert_relay(
        self, stack: contextlib.AsyncExitStack, identity: NodeIdentity, tools: MeshCatalog
    ) -> None:
        """System 5's alerts to a Telegram chat through a bridge node's `telegram.send`."""
        from vsmcp.node.app.alert_relay import AlertRelay  # only with vsm.alert_telegram_chat

        relay = AlertRelay(
            chat_id=self.config.vsm.alert_telegram_chat,
            events=self.events,
            call_tool=tools.call_tool,
            node_id=identity.node_id,
            node_name=self.config.node.name or identity.node_id[-8:],
            zone=identity.zone,
        )
        await stack.enter_async_context(relay)
        self.metrics.add_counters(
            "vsmcp_alert_relay",
            "System 5 alerts relayed to vsm.alert_telegram_chat: sent, failed, suppressed",
            "event",
            lambda: dict(relay.stats),
            known=("sent", "failed", "suppressed"),
        )

    def _child_manager(
        self, identity: NodeIdentity, mesh: MeshService, replication: ReplicationService
    ) -> ChildManager:
        def tools_of(node_id: str) -> list[str]:
            return sorted(t.name for t in replication.tools() if t.provider == node_id)

        return ChildManager(
            data_dir=self.config.data_dir,
            trust=_parent_trust(identity),
            limits=self.config.recursion,
            seed=lambda: f"127.0.0.1:{mesh.port}",
            mesh_preset=self.config.mesh.preset,
            mesh_name=self.config.mesh.name,
            events=self.events,
            audit=lambda kind, data: self._audit_nowait(kind, identity.node_id, data),
            tools_of=tools_of,
            configured=self.config.children,
            capacity=self.vsm.capacity_factor,
            loops=self.loops,
        )

    def _take_certificate(self, identity: NodeIdentity, mesh: MeshService) -> None:
        """A renewed certificate (node/app/cert_reload.py): ours from now on."""
        self._identity = identity
        mesh.renew_certificate(
            encode_certificate(identity.signed_certificate), identity.fingerprint
        )
        manager = self.children.manager
        if manager is not None:
            manager.renew_trust(_parent_trust(identity))

    async def _start_scaler(
        self, stack: contextlib.AsyncExitStack, catalog: LocalCatalog, tools: MeshCatalog
    ) -> None:
        """System 3's variety-driven spawning of the `scale` tools (node/children/scale.py)."""
        scaled = [p for p in self.config.tools.plugins if p.scale is not None]
        if not scaled:
            return
        # Imported here: a node without `scale` tools never needs the scaler.
        from vsmcp.node.children.scale import ToolScaler

        scaler = ToolScaler(
            self.loops,
            tools=scaled,
            supervisor=catalog.supervisor,
            children=lambda: self.children.manager,
            routing=_ScaleRouting(tools),
            events=self.events,
            data_dir=self.config.data_dir,
        )
        tools.spill = scaler.tools
        await stack.enter_async_context(scaler)

    def children_view(self) -> dict[str, Any]:
        """`GET /api/children`."""
        return self.children.view()

    async def recent_audit(self, limit: int) -> list[dict[str, Any]]:
        """`GET /api/audit/recent`: the last committed entries, newest first."""
        return await self.audit.recent(limit)

    def children_post(
        self, body: object, authorization: str | None, remote: str | None
    ) -> tuple[int, dict[str, Any]]:
        """`POST /api/children`: (HTTP status, JSON body)."""
        caller, refusal = self.children.authorize(self.vsm, authorization, remote)
        if caller is None:
            return refusal or (403, {"error": "refused"})
        return self.children.post(body, caller)

    async def children_delete(
        self, name: str, authorization: str | None, remote: str | None
    ) -> tuple[int, dict[str, Any]]:
        """`DELETE /api/children/{name}`: (HTTP status, JSON body)."""
        caller, refusal = self.children.authorize(self.vsm, authorization, remote)
        if caller is None:
            return refusal or (403, {"error": "refused"})
        return await self.children.delete(name, caller)

    async def _start_vsm(
        self,
        stack: contextlib.AsyncExitStack,
        catalog: LocalCatalog,
        tools: MeshCatalog,
        mesh: MeshService,
        replication: ReplicationService,
    ) -> None:
        node_id = self.identity.node_id

        def mesh_tools() -> tuple[int, int]:
            # Client tools, as /api/tools lists them: not the offers tools (plumbing).
            seen = [t for t in replication.tools() if not is_offers_tool(t.name)]
            reachable = [
                t for t in seen if t.provider == node_id or mesh.member_state(t.provider) == "alive"
            ]
            return len(reachable), len(seen)

        tools.shedder = self.vsm.shedder
        tools.entry_limit = self.vsm.entry_gate
        tools.serve_limit = self.vsm.serve_gate
        self.audits.peer_audit = tools.audit_peer
        self.vsm.bind(
            catalog,
            MeshFacts(
                members=mesh.state_counts,
                mesh_tools=mesh_tools,
                peers_seen=lambda: len(mesh.peers),
                policies=lambda: len(replication.state.policies.view()),
                routing=lambda: {"stats": dict(tools.stats), "registry_tools": mesh_tools()[1]},
            ),
        )
        await stack.enter_async_context(self.vsm)
        self._register_regulation_metrics()
        self._register_gray_metrics(tools)
        self.metrics.add_gauges(
            "vsmcp_viability",
            "Viability score in [0, 1] of this node and of the mesh as it sees it",
            "scope",
            self.vsm.scores,
            known=("node", "mesh"),
        )
        self.metrics.add_gauges(
            "vsmcp_viability_factor",
            "Factors of the viability score, each in [0, 1] (docs/vsm.md)",
            "factor",
            lambda: viability_factors(self.vsm.viability_inputs()),
        )
        self.metrics.add_gauges(
            "vsmcp_viability_input",
            "Measured inputs of the viability score (docs/vsm.md); latency_p95_seconds is -1 "
            "without calls in the window",
            "input",
            lambda: viability_input_gauges(self.vsm.viability_inputs()),
        )
        self.metrics.add_gauges(
            "vsmcp_policies",
            "Live verified policies in the replicated policy set, by kind (immune "
            "mitigations and observations, ...)",
            "kind",
            lambda: Counter(p.kind for p in replication.state.policies.view()),
            known=sorted(IMMUNE_KINDS),
        )
        self.metrics.add_counters(
            "vsmcp_algedonic_signals",
            "Algedonic signals by lane and outcome (accepted, dropped: lane full)",
            "event",
            self._algedonic_counts,
        )

    def _algedonic_counts(self) -> dict[str, int]:
        lanes = (self.vsm.channel.s5, self.vsm.channel.s3)
        counts = {f"{lane.name}_accepted": lane.accepted for lane in lanes}
        counts.update({f"{lane.name}_dropped": lane.dropped for lane in lanes})
        return counts

    def _audit_s5(self, kind: str, data: dict[str, Any]) -> None:
        if self._audit is not None and self._identity is not None:
            self._audit_nowait(kind, self._identity.node_id, data)

    def vsm_view(self) -> dict[str, Any]:
        """`GET /api/vsm`: every system's state and the viability."""
        bridges = {} if self.bridges is None else self.bridges.view()
        view = self.vsm.view()
        view["s4"] = {**self.s4.view(), **view["s4"]}
        view["s3"] = {**view["s3"], "audits": self.audits.view()}
        if self._tools is not None:
            gray: dict[str, Any] = {"degraded": self._tools.gray.view()}
            if self._gray_exchange is not None:
                gray.update(self._gray_exchange.view())
            view["s2"] = {**view["s2"], "gray": gray}
        return {**view, "bridges": bridges}

    async def plan_post(
        self, body: object, authorization: str | None, remote: str | None
    ) -> tuple[int, dict[str, Any]]:
        """`POST /api/plan`: a dry run (HTTP status, JSON body)."""
        return await self.s4.post(self.vsm, body, authorization, remote, run=False)

    async def ask_post(
        self, body: object, authorization: str | None, remote: str | None
    ) -> tuple[int, dict[str, Any]]:
        """`POST /api/ask`: plan and run (HTTP status, JSON body)."""
        return await self.s4.post(self.vsm, body, authorization, remote, run=True)

    def vsm_status(self) -> dict[str, Any]:
        """The `vsm.status` tool: the node's status and `GET /api/vsm` in one document."""
        return {**self.status(), **self.vsm_view()}

    def algedonic_post(
        self, body: object, authorization: str | None, remote: str | None
    ) -> tuple[int, dict[str, Any]]:
        """`POST /api/algedonic`: (HTTP status, JSON body)."""
        return self.vsm.post_signal(body, authorization, remote)

    async def _start_patterns(self, stack: contextlib.AsyncExitStack) -> None:
        try:
            await stack.enter_async_context(self.patterns)
        except PatternError as e:
            raise ConfigError("vsm.patterns_dir", str(e)) from e
        self.metrics.add_counters(
            "vsmcp_pattern_matches",
            "Matches of each pattern of the pattern engine (since start)",
            "pattern",
            self.patterns.engine.match_counts,
        )
        self.metrics.add_counters(
            "vsmcp_patterns_events",
            "Pattern engine: reloads of vsm.patterns_dir, refused reloads, refused or "
            "unsigned pattern policies, tool actions, window evictions",
            "event",
            self._pattern_counts,
        )

    def _pattern_counts(self) -> dict[str, int]:
        service = self.patterns
        counts = dict(service.stats)
        counts["ignored_unsigned"] = service.unsigned_patterns()
        counts["window_evictions"] = sum(
            w["evictions"] for w in service.engine.window_stats().values()
        )
        counts["bad_events"] = service.engine.bad_events
        return counts

    def _pattern_tool_caller(self, catalog: LocalCatalog, identity: NodeIdentity) -> ToolCaller:
        """`tool` actions run through the local catalog in the node's own zone."""

        async def call(tool: str, arguments: Mapping[str, Any], pattern: str) -> object:
            ctx = CallContext(
                caller_id=f"pattern:{pattern}", caller_zone=identity.zone, origin=f"vsm:{pattern}"
            )
            return await catalog.call_tool(tool, arguments, ctx)

        return call

    def _start_immune(
        self,
        identity: NodeIdentity,
        mesh: MeshService,
        replication: ReplicationService,
        tools: MeshCatalog,
    ) -> None:
        """The immune system: enforces what the policies CRDT holds (from now on, and
        what the snapshot restored) on the mesh and on tool calls, issues through the
        `policy` action and `mitigate`. Wired before the mesh starts (HTTP already
        serves: a call from a blocked origin is refused from here on)."""
        cfg = self.config.vsm.immune
        protected = {
            node_id_from_public_key(identity.authority_public_key),
            node_id_from_public_key(identity.certificate.issuer_public_key),
        }
        immune = ImmuneService(
            policies=replication.state.policies,
            signer=identity.key,
            config=cfg,
            protected=protected,
            alive=quorum_members(mesh),
            quorum_max=MEMBERSHIP_PRESETS[self.config.mesh.preset]().quorum_max,
            events=self.events,
            audit=lambda kind, data: self._audit_nowait(kind, identity.node_id, data),
        )
        self.immune = immune
        link_node_blocks(mesh, immune)
        tools.gate = immune.check_call
        # System 5's block_origin rules act through the immune system.
        self.vsm.s5.mitigator = immune
        self.actions.register("policy", immune.on_match)
        if cfg.enabled:
            self.patterns.set_source(IMMUNE_SOURCE, immune_patterns(cfg, identity.node_id))
        self.metrics.add_counters(
            "vsmcp_immune_events",
            "Immune system: mitigations issued, observations, pending, duplicate, refused "
            "(by reason), calls refused by a policy, bad policy bodies",
            "event",
            lambda: dict(immune.stats),
        )

    def _wasm_distribution(
        self,
        identity: NodeIdentity,
        catalog: LocalCatalog,
        mesh: MeshService,
        replication: ReplicationService,
    ) -> WasmDistribution:
        wasm = WasmDistribution(
            policies=replication.state.policies,
            catalog=catalog,
            mesh=mesh,
            directory=self.config.data_dir / "wasm",
            edge=self.config.edge,
            tools=self.config.tools,
            node_id=identity.node_id,
            signer=identity.key,
            events=self.events,
            audit=lambda kind, data: self._audit_nowait(kind, identity.node_id, data),
            loops=self.loops,
        )
        self.metrics.add_counters(
            "vsmcp_wasm_distribution_events",
            "Published WASM modules: published, fetched, loaded, unloaded, chunks served, "
            "fetches failed, short chunks, holders too slow, refused (by reason: hash, "
            "signature, manifest, too_large, load)",
            "event",
            lambda: dict(wasm.stats),
        )
        return wasm

    def wasm_view(self) -> dict[str, Any]:
        """`GET /api/wasm/modules`."""
        if self.wasm is None:
            raise StartupError("node not started")
        return self.wasm.view()

    def wasm_authorize(
        self, authorization: str | None, remote: str | None
    ) -> tuple[int, dict[str, Any]] | None:
        """`POST`/`DELETE /api/wasm/modules`: None when the caller may, else (HTTP status,
        JSON body). A module published here is signed by this node and run by every node
        with `[edge] run`, so not anyone reaching HTTP may."""
        caller, refusal = self._zone_authorize(
            authorization, remote, "edge.publish_zone", "publish or unpublish WASM modules"
        )
        return None if caller is not None else (refusal or (403, {"error": "refused"}))

    def _zone_authorize(
        self, authorization: str | None, remote: str | None, key: str, action: str
    ) -> tuple[str | None, tuple[int, dict[str, Any]] | None]:
        """`authorize` against the zone the config key `key` (section.name) holds."""
        section, name = key.split(".")
        zone = getattr(getattr(self.config, section), name)
        zones = ZoneOrder(self.config.trust.zones)
        return authorize(
            self.config.data_dir,
            self.vsm,
            zones,
            authorization,
            remote,
            zone=zone,
            key=key,
            action=action,
        )

    def wasm_publish_limit(self) -> int:
        """The largest `POST /api/wasm/modules` body read: the module, base64 (4/3 of
        `edge.max_module_bytes`), plus room for its manifest or signed record."""
        return self.config.edge.max_module_bytes * 4 // 3 + PUBLISH_REQUEST_SLACK_BYTES

    async def wasm_publish(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /api/wasm/modules`; raises PublishRefused, ValueError, KeyError."""
        if self.wasm is None:
            raise StartupError("node not started")
        return await self.wasm.publish(request)

    def wasm_unpublish(self, name: str) -> int:
        """`DELETE /api/wasm/modules/{name}`: the node's own manifests revoked."""
        if self.wasm is None:
            raise StartupError("node not started")
        return self.wasm.unpublish(name)

    def policies_view(self) -> dict[str, Any]:
        """`GET /api/policies`."""
        if self.immune is None:
            raise StartupError("node not started")
        return self.immune.view()

    def policy_agent_set(self) -> dict[str, Any]:
        """`GET /api/policy-agent/policies`: the mitigations enforced here and the zones,
        signed by this node, for the policy agent to decide as this node would."""
        if self.immune is None or self._identity is None:
            raise StartupError("node not started")
        # Imported at the first request for it: a node nobody asks never loads it.
        from vsmcp.node.policyagent.policy_set import policy_set, sign_policy_set

        key = self._identity.key
        now_ms = int(time.time() * 1000)
        doc = policy_set(self.immune.blocks.all(), self.config.trust.zones, key.public_key, now_ms)
        return sign_policy_set(doc, key.sign_detached)

    def accept_policy_record(self, blob: bytes) -> bool:
        """`POST /api/policies/revocations`: a record signed elsewhere (the authority)."""
        if self._replication is None:
            raise StartupError("node not started")
        try:
            return self._replication.state.policies.accept_signed(blob)
        except CrdtError as e:
            raise PolicyRecordRefused(f"policy record refused: {e}") from e

    def admin_authorize(
        self, authorization: str | None, remote: str | None
    ) -> tuple[str | None, tuple[int, dict[str, Any]] | None]:
        """The status page's admin actions (`GET /api/admin`, `POST /api/policies/revoke`):
        (caller name, None) for a bearer token whose zone is at least `http.admin_zone`, or
        the data dir's owner's; else (None, (HTTP status, JSON body)). A loopback zone
        (`mcp.loopback_zone`) alone is not enough: whoever merely reaches the page reads."""
        if authorization is None:
            zone = self.config.http.admin_zone
            return None, (401, {"error": f"a bearer token of zone {zone!r} (http.admin_zone)"})
        return self._zone_authorize(
            authorization, remote, "http.admin_zone", "use the status page's admin actions"
        )

    def revoke_policy(self, issuer: bytes, policy_id: str, caller: str) -> bool:
        """`POST /api/policies/revoke`: revoke a live policy this node issued, signed with
        its key; False when no live version is held. Raises PolicyRecordRefused for
        another issuer's: whether a peer takes our key as an authority is not ours to
        know, so those are revoked at their issuer or with the authority's key."""
        if self._replication is None:
            raise StartupError("node not started")
        if issuer != self.identity.key.public_key:
            raise PolicyRecordRefused(
                f"policy of {node_id_from_public_key(issuer)}, not of this node: revoke it "
                "at its issuer, or sign with the authority's key (vsmcp policies revoke --key)"
            )
        try:
            revoked = self._replication.state.policies.revoke(
                issuer, policy_id, by=self.identity.key
            )
        except CrdtError as e:
            raise PolicyRecordRefused(
                f"this node may not revoke it ({e}): sign the revocation with the "
                "authority's key (vsmcp policies revoke --key)"
            ) from e
        if revoked:
            issuer_id = node_id_from_public_key(issuer)
            self._audit_nowait("policy.revoke", caller, {"issuer": issuer_id, "id": policy_id})
        return revoked

    def patterns_view(self) -> dict[str, Any]:
        """`GET /api/patterns`."""
        return self.patterns.view()

    async def _start_local_catalog(self, stack: contextlib.AsyncExitStack) -> LocalCatalog:
        catalog = build_local_catalog(
            self.config.tools,
            self.config.limits,
            zones=self.config.trust.zones,
            status=self.vsm_status,
            peers=self.peers,
            tools_view=self.tools,
            signal=self.vsm.signal_tool,
            signal_zone=self.config.vsm.signal_zone,
            probe=self.audits.probe_tool,
            edge=self.config.edge,
            wasm_cache_dir=self.config.data_dir / "wasm-cache",
        )
        catalog.policy.events = self.events
        catalog.supervisor.events = self.events
        self._bind_audits(catalog)
        catalog.add(
            children_provider(
                self.children.spawn, self.children.stop, self.config.recursion.spawn_zone
            )
        )
        if self.config.node.debug_api:
            catalog.add(self._debug_tools)
            log.warning("debug API on: /api/debug/* can cut links and add tools")
        await stack.enter_async_context(catalog)
        self._catalog = catalog
        limiter = catalog.policy.limiter
        if limiter is not None:
            self.metrics.add_counters(
                "vsmcp_rate_limit_evictions",
                "Rate-limit buckets evicted by the bound on their number (limits.max_buckets)",
                "kind",
                limiter.evictions,
            )
        self._register_mount_metrics(catalog)
        self._register_wasm_metrics(catalog)
        return catalog

    def _register_wasm_metrics(self, catalog: LocalCatalog) -> None:
        # Imported by whoever builds a WASM tool (registry, WASM distribution): a node
        # without one has not loaded the WASM runtime (vsmcp.edge) and need not.
        wasm_tools = sys.modules.get("vsmcp.node.tools.wasm")
        if wasm_tools is None:
            return
        units = catalog.supervisor.units.values()
        wasm = [u.provider for u in units if isinstance(u.provider, wasm_tools.WasmProvider)]
        if not wasm:
            return

        def stops() -> dict[str, int]:
            total: Counter[str] = Counter()
            for provider in wasm:
                total.update(provider.stops)
            return dict(total)

        def inline() -> dict[str, int]:
            total: Counter[str] = Counter()
            for provider in wasm:
                total.update(provider.inline_counts())
            return dict(total)

        self.metrics.add_counters(
            "vsmcp_wasm_stops",
            "WASM tool calls stopped at a limit (time, memory, output) or by a trap",
            "limit",
            stops,
        )
        self.metrics.add_counters(
            "vsmcp_wasm_inline_calls",
            "WASM tool calls tried on the event loop: answered within its budget, or overran "
            "it (run again in a worker)",
            "outcome",
            inline,
        )

    def _register_mount_metrics(self, catalog: LocalCatalog) -> None:
        # Imported by the registry with the first mount: a node without one has not
        # loaded the mount client side (nor its stdio transport) and need not.
        mounted = sys.modules.get("vsmcp.node.tools.mounted")
        units = catalog.supervisor.units.values()
        mounts = (
            []
            if mounted is None
            else [u.provider for u in units if isinstance(u.provider, mounted.MountedServer)]
        )

        def counts(field: str) -> dict[str, int]:
            return {m.name.removeprefix("mount:"): getattr(m.stats, field) for m in mounts}

        self.metrics.add_counters(
            "vsmcp_mount_garbage_lines",
            "Lines a mounted stdio server wrote to stdout that were not JSON-RPC (skipped)",
            "mount",
            lambda: counts("garbage_lines"),
        )
        self.metrics.add_counters(
            "vsmcp_mount_oversized_answers",
            "Answers of mounted servers dropped for passing tools.max_result_bytes",
            "mount",
            lambda: counts("oversized_messages"),
        )
        self.metrics.add_counters(
            "vsmcp_mount_malformed_answers",
            "Answers of mounted servers that did not validate (that call failed, no fault)",
            "mount",
            lambda: counts("malformed_answers"),
        )
        self.metrics.add_counters(
            "vsmcp_mount_protocol_fallbacks",
            "Reconnections of a mode = auto mount in 2025-11-25 after its 2026-07-28 answers "
            "did not validate",
            "mount",
            lambda: counts("fallbacks"),
        )

        def client_counts() -> dict[str, int]:
            total: Counter[str] = Counter()
            for mount in mounts:
                total.update(mount.client_side.counts)
            return dict(total)

        self.metrics.add_counters(
            "vsmcp_mount_client",
            "Mounted servers' log lines and server-to-client requests, by outcome (all mounts)",
            "outcome",
            client_counts,
            known=MOUNT_CLIENT_OUTCOMES,
        )
        self.metrics.add_counters(
            "vsmcp_mount_stderr_dropped_lines",
            "stderr lines of mounted servers not logged (over the per-second limit)",
            "mount",
            lambda: counts("stderr_dropped"),
        )

    def _mesh_service(self, identity: NodeIdentity, sealer: Sealer) -> MeshService:
        mesh_cfg = self.config.mesh
        mesh = MeshService(
            key=identity.key,
            certificate=encode_certificate(identity.signed_certificate),
            authority_public_key=identity.authority_public_key,
            zones=identity.zones,
            dev=identity.dev,
            sealer=sealer,
            opener=self.opener,
            host=mesh_cfg.host,
            port=mesh_cfg.port,
            http_port=None,
            fingerprint=identity.fingerprint,
            seeds=mesh_cfg.seeds,
            mdns=mesh_cfg.mdns,
            mdns_compiled=mesh_cfg.mdns_compiled,
            mesh_name=mesh_cfg.name,
            node_name=self.config.node.name,
            preset=mesh_cfg.preset,
            dead_reap_after_s=mesh_cfg.dead_reap_after_s,
            left_reap_after_s=mesh_cfg.left_reap_after_s,
            on_member_change=self._member_changed,
            loops=self.loops,
        )
        mesh.events = self.events
        return mesh

    def _register_regulation_metrics(self) -> None:
        """S3's KPIs of the adaptive concurrency limits, the units and the event loop."""
        vsm = self.vsm
        self.metrics.add_gauges(
            "vsmcp_concurrency_limit",
            "Adaptive concurrency limit of each entry (mcp, serve, unit:<name>)",
            "entry",
            lambda: {lim.name: lim.limit for lim in vsm.limiters()},
        )
        self.metrics.add_gauges(
            "vsmcp_concurrency_in_flight",
            "Calls in flight at each entry with an adaptive concurrency limit",
            "entry",
            lambda: {lim.name: lim.inflight for lim in vsm.limiters()},
        )
        self.metrics.add_counters(
            "vsmcp_concurrency_refused_total",
            "Calls refused at once by an adaptive concurrency limit, by priority class",
            "priority",
            lambda: _refused_by_priority(vsm.limiters()),
            known=PRIORITY_CLASSES,
        )
        self.metrics.add_gauge(
            "vsmcp_event_loop_lag_seconds",
            "How late the event loop woke for a timer, p99 over the last minute",
            lambda: vsm.overload.loop_lag_s(99),
        )
        now = time.time
        self.metrics.add_gauges(
            "vsmcp_unit_latency_p99_seconds",
            "p99 latency of each unit's calls over the last minute (-1: no calls)",
            "unit",
            lambda: {u.name: _seconds(u.kpis.latency_ms(now(), 99)) for u in vsm.units()},
        )
        self.metrics.add_gauges(
            "vsmcp_unit_error_ratio",
            "Failed / all calls of each unit over the last minute",
            "unit",
            lambda: {u.name: u.kpis.error_ratio(now()) for u in vsm.units()},
        )
        self.metrics.add_gauges(
            "vsmcp_unit_in_flight",
            "Calls running or waiting in each unit",
            "unit",
            lambda: {u.name: u.running_calls + u.waiting_calls for u in vsm.units()},
        )

    def _register_mcp(self, http: HttpServer, tools: MeshCatalog) -> None:
        mcp = self.config.mcp
        tokens = {
            t.token: TokenGrant(zone=t.zone, name=t.name, max_priority=t.max_priority)
            for t in mcp.tokens
        }
        # `vsmcp mcp-stdio` proves itself with the secret in the data dir; the zone is
        # ours to decide (node/mcp/stdio_auth.py says why it is not the client's word).
        stdio_secret = ensure_stdio_token(self.config.data_dir)
        # The stdio bridge is a local client: it gets the loopback client's priority cap.
        tokens[stdio_secret] = TokenGrant(
            zone=mcp.stdio_zone, name=STDIO_GRANT_NAME, max_priority=mcp.loopback_max_priority
        )
        gateway = register_mcp_routes(
            http.app,
            tools,
            tokens=tokens,
            loopback_zone=mcp.loopback_zone,
            loopback_max_priority=mcp.loopback_max_priority,
            max_body_bytes=mcp.max_body_bytes,
            max_sessions=mcp.max_sessions,
            max_sessions_per_caller=mcp.max_sessions_per_caller,
            session_idle_s=mcp.session_idle_s,
            max_listeners=mcp.max_listeners,
            max_listeners_per_caller=mcp.max_listeners_per_caller,
        )
        if mcp.max_listed_tools:
            from vsmcp.node.mcp.find_tools import ToolFinder  # only with a short list

            gateway.core.finder = ToolFinder(mcp.max_listed_tools)
        asks, relay = gateway.core.client_requests, tools.client_relay
        self.metrics.add_gauges(
            "vsmcp_client_requests_pending",
            "Server-to-client requests (sampling, elicitation, roots) waiting for a client: "
            "at this node's /mcp (gateway), or relayed here for a provider (relay)",
            "where",
            lambda: {"gateway": asks.pending, "relay": relay.pending},
            known=("gateway", "relay"),
        )
        self.metrics.add_counters(
            "vsmcp_client_requests",
            "Server-to-client requests at this node's /mcp by outcome",
            "outcome",
            lambda: dict(asks.counts),
            known=COUNTED_OUTCOMES,
        )
        self.metrics.add_counters(
            "vsmcp_client_relay",
            "Providers' logs and server-to-client requests this entry node served for calls "
            "it sent to other nodes, by outcome",
            "outcome",
            lambda: dict(relay.counts),
            known=RELAY_OUTCOMES,
        )
        rounds = gateway.rounds
        self.metrics.add_gauge(
            "vsmcp_mcp_input_rounds_parked",
            "2026-07-28 calls parked between input_required rounds at this node's /mcp",
            lambda: rounds.parked,
        )
        gateway.refusal_observer = self._refusal_times.observe

    def _allowed_hosts(self) -> list[str]:
        """Host names HTTP answers on every route (a page re-pointed at us by DNS
        gets 421), wherever it listens: loopback names, the bind address unless it is
        a wildcard, and `mcp.allowed_hosts` (the policy adds the address each client
        connected to). Loopback names are always safe to answer, and local tools
        (`vsmcp status`, probes) use them."""
        host = self.config.http.host
        bound = [] if is_wildcard_address(host) else [host]
        return ["localhost", "127.0.0.1", "::1", *bound, *self.config.mcp.allowed_hosts]

    async def stop(self) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        self.metrics.set_up(False)
        await stack.aclose()
        log.info("node stopped")

    def _refuse_to_go_on(self, reason: str) -> None:
        if self.fatal_error is None:
            self.fatal_error = reason
            log.error("stopping: %s", reason)
        self.fatal.set()

    async def _audit_stop(self) -> None:
        await asyncio.gather(*self._audit_tasks, return_exceptions=True)
        if self._audit is not None and self._identity is not None:
            await self._audit.append("node.stop", self._identity.node_id, {})

    # -- replay guard persistence ------------------------------------------------------

    async def _restore_replay_guard(self, store: Store) -> ReplayGuard:
        """Fresh data dir: empty guard. Clean stop: restore the dump. Crash: refuse
        everything timestamped before now + the future skew the crashed process
        accepted under (any of it may have been accepted)."""
        env = self.config.envelope
        run_state = await store.kv_get(KV_RUN_STATE)
        saved = await store.kv_get(KV_REPLAY_GUARD)
        crashed_future_ms = _crashed_future_ms(
            await store.kv_get(KV_REPLAY_FUTURE_MS), env.max_skew_s * 1000
        )
        future_ms = env.max_future_skew_s * 1000
        await store.kv_set(KV_REPLAY_FUTURE_MS, future_ms.to_bytes(8, "big"))
        await store.kv_set(KV_RUN_STATE, RUN_STATE_RUNNING)
        kwargs: dict[str, Any] = {
            "window": env.replay_window,
            "max_senders": env.replay_max_senders,
            "max_skew_ms": env.max_skew_s * 1000,
            "max_future_ms": future_ms,
        }
        if run_state is None:
            return ReplayGuard(**kwargs)
        if run_state == RUN_STATE_CLEAN and saved is not None:
            try:
                return ReplayGuard.restore(saved, **kwargs)
            except MeshError:
                log.warning("saved replay state unreadable; treating restart as a crash")
        # The floor must cover what the crashed process could have accepted, under
        # its own bound, even if the config has shortened it since.
        floor_future_ms = max(future_ms, crashed_future_ms)
        log.warning(
            "previous run did not stop cleanly: refusing envelopes timestamped before "
            "now + %.1f s (they may be replays)",
            floor_future_ms / 1000,
        )
        now_ms = wall_clock_ms()
        guard = ReplayGuard(**kwargs)
        with contextlib.suppress(MeshError):
            guard = ReplayGuard.after_crash(saved, now_ms, **kwargs)
        guard.raise_floor(now_ms + floor_future_ms)
        # Saved at once: should this run crash too, the next start must still hold this
        # floor (its bound may be shorter than the one this floor covers).
        await store.kv_set(KV_REPLAY_GUARD, guard.dump())
        return guard

    async def _save_replay_guard(self, store: Store, guard: ReplayGuard) -> None:
        await store.kv_set(KV_REPLAY_GUARD, guard.dump())
        await store.kv_set(KV_RUN_STATE, RUN_STATE_CLEAN)

    async def _sealer(
        self, store: Store, identity: NodeIdentity, stack: contextlib.AsyncExitStack
    ) -> Sealer:
        """Our sequence numbers must rise across restarts even if the clock steps back."""
        saved = await store.kv_get(KV_SEALER_SEQ)
        hint = int.from_bytes(saved, "big") if saved else None
        sealer = Sealer(identity.key, seq_start=hint, max_size=self.config.envelope.max_bytes)

        async def save() -> None:
            await store.kv_set(KV_SEALER_SEQ, (sealer.last_seq + 1).to_bytes(8, "big"))

        stack.push_async_callback(save)
        return sealer

    def _member_changed(self, change: MemberStateChanged | MemberReaped) -> None:
        old: str | None
        if isinstance(change, MemberReaped):
            old, new = change.state.name.lower(), "reaped"
        elif change.old == change.new:
            return
        else:
            old = change.old.name.lower() if change.old is not None else None
            new = change.new.name.lower()
        if self.immune is not None:  # a node block restored unconfirmed may be backed now
            self.immune.members_changed()
        self.events.publish(
            MembershipChanged(
                ts=time.time(),
                peer=change.member,
                state=new,
                previous=old,
                zone=self._zone_of(change.member),
            )
        )
        if self._audit is None:
            return
        self._audit_nowait(
            "mesh.member",
            change.member,
            {"old": old, "new": new, "incarnation": change.incarnation},
        )

    def _zone_of(self, node_id: str) -> str | None:
        peer = self._mesh.peers.get(node_id) if self._mesh is not None else None
        return None if peer is None else peer.certificate.zone

    def _count_events(self, batch: list[Event]) -> None:
        """The `metrics` subscriber: events published, by kind (off the publishers' path)."""
        counts = self._event_counts
        for event in batch:
            counts[_KIND_NAMES.get(event.__class__, "other")] += 1
            if isinstance(event, ToolCallFinished):
                self._tool_calls.observe(event)

    def _audit_nowait(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        task = asyncio.create_task(self.audit.append(kind, actor, data), name=f"audit-{kind}")
        self._audit_tasks.add(task)
        task.add_done_callback(self._audit_tasks.discard)

    # -- views -------------------------------------------------------------------------

    @property
    def identity(self) -> NodeIdentity:
        if self._identity is None:
            raise StartupError("node not started")
        return self._identity

    @property
    def audit(self) -> AuditLog:
        if self._audit is None:
            raise StartupError("node not started")
        return self._audit

    @property
    def audit_anchor(self) -> AuditAnchor:
        if self._anchor is None:
            raise StartupError("node not started")
        return self._anchor

    @property
    def opener(self) -> Opener:
        if self._opener is None:
            raise StartupError("node not started")
        return self._opener

    @property
    def mesh(self) -> MeshService:
        if self._mesh is None:
            raise StartupError("node not started")
        return self._mesh

    @property
    def mesh_port(self) -> int | None:
        return self._mesh.port if self._mesh else None

    @property
    def http_port(self) -> int | None:
        return self._http.port if self._http else None

    def runtime_info(self) -> dict[str, Any]:
        port = self.http_port
        return {
            "pid": os.getpid(),
            "node_id": self.identity.node_id,
            "http_port": port,
            "http_url": local_http_url(self.config.http.host, port) if port else None,
            "mesh_port": self.mesh_port,
            "version": __version__,
        }

    def status(self) -> dict[str, Any]:
        identity = self.identity
        return {
            "node_id": identity.node_id,
            "name": self.config.node.name or identity.node_id[-8:],
            "zone": identity.zone,
            "roles": list(identity.certificate.roles),
            "version": __version__,
            # 0 until every part has started (HTTP answers before the mesh is up).
            "uptime_s": (
                round(time.monotonic() - self._started_monotonic, 3)
                if self._started_monotonic
                else 0.0
            ),
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "dev": identity.dev,
            "http_port": self.http_port,
            "mesh_port": self.mesh_port,
            "peers": self._mesh.state_counts() if self._mesh else {},
            "certificate_fingerprint": identity.fingerprint,
            "certificate_expires_at_s": identity.certificate.expires_at_s,
            # A child VSM's parent is the node that delegated its certificate.
            "depth": identity.certificate.depth,
            "parent": parent_node_id(identity.certificate),
            "children": {c["name"]: c["state"] for c in self.children.view()["children"]},
            "certificate_renewal": None
            if self._cert_reloader is None
            else self._cert_reloader.view(),
        }

    def peers(self) -> list[dict[str, Any]]:
        if self._mesh is None:
            return []
        peers = self._mesh.peer_view()
        if self._tools is not None:
            gray = self._tools.gray
            peers = [{**peer, "gray": gray.provider_view(peer["id"])} for peer in peers]
        return peers

    def tools(self) -> list[dict[str, Any]]:
        """The tools of the capability registry as this node sees them, with each
        provider's state (`/api/tools` `tools`, the `vsm.tools` tool): without the offers
        tools, which carry resources and prompts and are no tool a client calls."""
        return self._registry_rows(offers=False)

    def offer_tools(self) -> list[dict[str, Any]]:
        """The offers tools (`vsm.mcp.<unit>`, `node.tools.offers`) of the registry, as
        `tools` lists tools (`/api/tools` `offers`: which node offers resources, prompts)."""
        return self._registry_rows(offers=True)

    def _registry_rows(self, *, offers: bool) -> list[dict[str, Any]]:
        if self._replication is None or self._identity is None:
            return []
        return [
            {
                "name": t.name,
                "provider": t.provider,
                "zone": t.zone,
                "description": t.description,
                "version": t.version,
                "provider_state": self._provider_state(t.provider),
                "provider_parent": self._parent_of(t.provider),
                "degraded": self._degraded(t.provider, t.name),
            }
            for t in self._replication.tools()
            if is_offers_tool(t.name) == offers
        ]

    def _degraded(self, provider: str, tool: str) -> str | None:
        """Gray failures: "local" (this node saw it), "quorum" (a quorum of callers did)."""
        if self._tools is None:
            return None
        gray = self._tools.gray
        if (provider, tool) in gray.quorum:
            return "quorum"
        return "local" if gray.is_degraded(provider, tool) else None

    def _parent_of(self, node_id: str) -> str | None:
        """The parent VSM of a provider (node/children), from its certificate."""
        if node_id == self.identity.node_id:
            return parent_node_id(self.identity.certificate)
        peer = self.mesh.peers.get(node_id)
        return None if peer is None else parent_node_id(peer.certificate)

    def _provider_state(self, node_id: str) -> str | None:
        if node_id == self.identity.node_id:
            return "self"
        return self.mesh.member_state(node_id)

    def _require_debug_api(self) -> None:
        if not self.config.node.debug_api:
            raise DebugApiDisabled("the debug API is off (node.debug_api = false)")

    def block_peer(self, node_id: str, blocked: bool) -> None:
        """Cut (or restore) the link to a peer, both ways, as if the network dropped it."""
        self._require_debug_api()
        if blocked:
            self.mesh.block(node_id)
        else:
            self.mesh.unblock(node_id)

    def debug_tool(self, name: str, zone: str, present: bool) -> None:
        """Add or remove a runtime tool that echoes its arguments (tests, benchmarks)."""
        self._require_debug_api()
        if zone not in self.config.trust.zones:
            raise DebugApiDisabled(f"unknown zone {zone!r}")
        if present:
            self._debug_tools.add(name, zone)
        else:
            self._debug_tools.remove(name)

    def healthy(self) -> bool:
        return (
            self._stack is not None
            and not self.fatal.is_set()
            and not self._descriptors_exhausted()
            and self.loops.healthy
        )

    def _descriptors_exhausted(self) -> bool:
        exhausted = descriptors_exhausted()
        if exhausted != self._out_of_descriptors:
            self._out_of_descriptors = exhausted
            if exhausted:
                log.error(
                    "unhealthy: fewer than %d file descriptors left (open, limit: %s)",
                    MIN_FREE_DESCRIPTORS,
                    descriptor_usage(),
                )
            else:
                log.info("file descriptors available again: healthy")
        return exhausted

    def health_problems(self) -> list[str]:
        """Why `healthy()` is false (empty when it is true)."""
        problems = [] if self._stack is not None else ["node not running"]
        if self.fatal_error is not None:
            problems.append(self.fatal_error)
        if self._descriptors_exhausted():
            problems.append(
                f"fewer than {MIN_FREE_DESCRIPTORS} file descriptors left ({descriptor_usage()})"
            )
        return problems + self.loops.problems()

    def debug_loop_fault(self, name: str) -> None:
        """End the supervised loop `name` as if it had raised (tests of its restart)."""
        self._require_debug_api()
        if not self.loops.inject_fault(name):
            raise DebugApiDisabled(f"no loop {name!r}; running: {', '.join(self.loops.running())}")

    def render_metrics(self) -> bytes:
        return self.metrics.render()

    def _register_metrics(self) -> None:
        self.metrics.add_counters(
            "vsmcp_events",
            "Events published on the node's event stream, by kind (as the metrics "
            "subscriber received them)",
            "kind",
            lambda: dict(self._event_counts),
            known=tuple(NODE_CATALOG.kinds),
        )
        self.metrics.add_counters(
            "vsmcp_events_dropped",
            "Events not delivered to a subscriber of the event stream (its buffer was full)",
            "subscriber",
            lambda: {s.name: s.dropped for s in self.events.subscribers()},
        )
        self.metrics.add_counters(
            "vsmcp_loop_restarts",
            "Restarts of background loops after they failed, by loop",
            "loop",
            self.loops.restart_counts,
        )
        self.metrics.add_gauge(
            "vsmcp_audit_uncommitted_entries",
            "Audit entries accepted but not yet committed (lost if the process dies now)",
            lambda: self.audit.pending,
        )

        def accepted() -> dict[str, int]:
            return {"accepted": self.opener.accepted}

        self.metrics.add_counters(
            "vsmcp_envelopes",
            "Inbound envelopes by outcome",
            "outcome",
            accepted,
            known=("accepted",),
        )
        self.metrics.add_counters(
            "vsmcp_envelopes_rejected",
            "Inbound envelopes rejected, by reason",
            "reason",
            lambda: dict(self.opener.rejected),
            known=ENVELOPE_REJECT_REASONS,
        )

    def _register_http_metrics(self, http: HttpServer) -> None:
        guard = http.guard
        self.metrics.add_gauges(
            "vsmcp_http_connections",
            "Open HTTP connections (reserved: past http.max_connections, operational only)",
            "kind",
            guard.connection_counts,
            known=("open", "reserved"),
        )
        self.metrics.add_counters(
            "vsmcp_http_refused",
            "HTTP connections or requests refused or closed by a limit, by reason",
            "reason",
            lambda: dict(guard.refused),
            known=REFUSE_REASONS,
        )
        page = self.page
        self.metrics.add_gauge(
            "vsmcp_page_clients_open", "Open status page feeds (/api/stream)", lambda: page.clients
        )
        self.metrics.add_counters(
            "vsmcp_page_clients",
            "Status page feeds: opened, refused (past http.max_page_clients), dropped "
            "(stopped reading: their queue filled)",
            "event",
            lambda: {"opened": page.opened, "refused": page.refused, "dropped": page.dropped},
            known=("opened", "refused", "dropped"),
        )

    def _register_anchor_metrics(self, anchor: AuditAnchor) -> None:
        self.metrics.add_counters(
            "vsmcp_audit_anchor_messages",
            "AUDIT_HEAD messages from peers: received, rejected (bad or forged), compared "
            "(a head of ours checked against our log)",
            "event",
            lambda: {
                "received": anchor.received,
                "rejected": anchor.rejected,
                "compared": anchor.compared,
            },
            known=("received", "rejected", "compared"),
        )

    def _register_mesh_metrics(self, mesh: MeshService) -> None:
        self.metrics.add_gauges(
            "vsmcp_mesh_members",
            "Members of the mesh by state, as this node sees them",
            "state",
            mesh.state_counts,
            known=("alive", "suspect", "zombie", "dead", "left"),
        )
        self.metrics.add_counters(
            "vsmcp_mesh_refused",
            "Peers or messages refused admission, by reason",
            "reason",
            lambda: dict(mesh.stats.refused),
        )
        self.metrics.add_counters(
            "vsmcp_mesh_dropped",
            "Outbound or inbound mesh messages dropped, by reason",
            "reason",
            lambda: dict(mesh.stats.dropped),
        )
        self.metrics.add_gauges(
            "vsmcp_transport_links",
            "Open outbound mesh links by budget (admitted peers, candidates)",
            "budget",
            mesh.transport.link_counts,
            known=("peer", "candidate"),
        )
        self.metrics.add_gauges(
            "vsmcp_mdns_state",
            "This node's mDNS service: 1 for its state (off, registering, registered, failed)",
            "state",
            lambda: {state: int(state == mesh.mdns_state) for state in MDNS_STATES},
            known=MDNS_STATES,
        )
        self.metrics.add_counters(
            "vsmcp_mesh_hellos",
            "HELLO requests sent to candidates and answered",
            "direction",
            lambda: {"sent": mesh.stats.hellos_sent, "answered": mesh.stats.hellos_answered},
        )
        self.metrics.add_counters(
            "vsmcp_transport_frames",
            "Transport frames by direction",
            "direction",
            mesh.transport_counts,
        )
        self.metrics.add_counters(
            "vsmcp_mesh_calls",
            "Requests between peers (coalesced into CALLS/REPLIES envelopes), by event",
            "event",
            mesh.call_counts,
            known=MESH_CALL_EVENTS,
        )
        self.metrics.add_counters(
            "vsmcp_membership_events",
            "Membership protocol events (probes, suspicions, observation rounds, verdicts)",
            "event",
            mesh.membership_counts,
        )
        self.metrics.add_counters(
            "vsmcp_mesh_envelope_bytes",
            "Bytes of one-way mesh envelopes (membership, sync) by direction",
            "direction",
            mesh.byte_counts,
        )


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Any:
    """One daemon per data dir: a second one would corrupt the replay and audit state."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartupError(
                f"another vsmcpd is already running with data dir {path.parent}"
            ) from None
        yield
    finally:
        os.close(fd)


# A bind refused for one of these is about the port (taken, or privileged); anything
# else (no such address here, a name that does not resolve) is about the host.
_PORT_ERRNOS = frozenset({errno.EADDRINUSE, errno.EACCES})


def _bind_error(section: str, host: str, port: int, error: BaseException) -> ConfigError:
    """A config error naming the key to change, for a listening socket the OS refused.
    Exit 2, not 1: restarting (systemd) will not free the port or add the address."""
    number = getattr(error, "errno", None)
    if isinstance(error, socket.gaierror) or not isinstance(number, int) or number <= 0:
        detail = getattr(error, "strerror", None) or str(error)  # resolver errors: their text
    else:
        detail = os.strerror(number)  # uvloop and zmq wrap it in longer prose
    if number in _PORT_ERRNOS:
        taken = " (another process listens on it)" if number == errno.EADDRINUSE else ""
        return ConfigError(f"{section}.port", f"cannot listen on {host}:{port}: {detail}{taken}")
    return ConfigError(
        f"{section}.host",
        f"cannot listen on {host}:{port}: {detail} (not an address of this machine?)",
    )


def _write_runtime_file(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
    tmp.replace(path)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _crashed_future_ms(saved: bytes | None, max_skew_ms: int) -> int:
    """The future-skew bound a previous run accepted envelopes under. Builds before the
    bound was stored used the past window for both directions."""
    if saved is None or len(saved) != 8:
        return max_skew_ms
    return int.from_bytes(saved, "big")


def _refused_by_priority(limiters: Iterable[AdaptiveLimiter]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for limiter in limiters:
        out.update(limiter.refused)
    return dict(out)


def _seconds(ms: float | None) -> float:
    return -1.0 if ms is None else ms / 1000


def _parent_trust(identity: NodeIdentity) -> ParentTrust:
    """What the child manager certifies children with."""
    return ParentTrust(
        identity.key,
        identity.signed_certificate,
        identity.certificate,
        identity.zones,
        identity.authority_public_key,
    )


class _ScaleRouting:
    """System 3's scaler's view of the mesh catalog."""

    def __init__(self, tools: MeshCatalog) -> None:
        self._tools = tools

    def activity(self, node_id: str) -> tuple[int, int]:
        health = self._tools.selector.health.get(node_id)
        return (0, 0) if health is None else (health.inflight, health.started)

    def routable(self, tool: str, node_id: str) -> bool:
        return self._tools.routes_to(tool, node_id)

    def drain(self, tool: str, node_id: str, for_s: float) -> None:
        now = asyncio.get_running_loop().time()
        self._tools.selector.on_refusal(tool, node_id, now, for_s)
