"""The node's regulating systems put together: the algedonic channel, System 3's
aggregate and KPIs, System 5's responses, the entry shedder and the viability score,
and the one document that shows every system (`GET /api/vsm`, the `vsm.status` tool).

Kept out of node.py so the node only creates this, binds it to its parts once they
exist, and starts it.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.mesh.service import Service
from vsmcp.node.app.config import Config
from vsmcp.node.peers.service import is_loopback_host
from vsmcp.node.tools.config import RateLimitConfig
from vsmcp.node.tools.errors import InvalidArguments, Overloaded
from vsmcp.node.tools.model import CallContext
from vsmcp.node.tools.policy import zone_allows
from vsmcp.node.tools.registry import LocalCatalog
from vsmcp.node.tools.supervisor import Unit, UnitState
from vsmcp.node.vsm.algedonic import AlgedonicChannel, ChannelFull, Signal, SignalError
from vsmcp.node.vsm.balance import AlgedonicBalance
from vsmcp.node.vsm.concurrency_config import DEFAULT_PAIN_AFTER_S
from vsmcp.node.vsm.events import ToolCallFinished
from vsmcp.node.vsm.kpis import CallKpis
from vsmcp.node.vsm.overload import DEFAULT_INTERVAL_S as OVERLOAD_TICK_S
from vsmcp.node.vsm.overload import OverloadWatch
from vsmcp.node.vsm.patterns.actions import Match
from vsmcp.node.vsm.patterns.model import Action, AlgedonicAction
from vsmcp.node.vsm.shedding import LoadShedder
from vsmcp.node.vsm.stream import EventStream
from vsmcp.node.vsm.system3 import System3Aggregate
from vsmcp.node.vsm.system5 import AuditSink, System5
from vsmcp.node.vsm.viability import ViabilityInputs, scores, viability_view

if TYPE_CHECKING:
    from vsmcp.node.tools.admission import EntryGate
    from vsmcp.node.vsm.concurrency import AdaptiveLimiter

log = logging.getLogger(__name__)

KPI_SUBSCRIBER = "s3-kpis"
# Names of the node's two entry limits (units' are `unit:<name>`).
ENTRY = "mcp"
SERVE = "serve"


class NodeEffectors:
    """System 5's effectors over the node's local catalog and entry shedder."""

    def __init__(self, shedder: LoadShedder, gates: Sequence[EntryGate] = ()) -> None:
        self.catalog: LocalCatalog | None = None
        self.shedder = shedder
        self.gates = tuple(gates)  # the node's entry limits (units' are the supervisor's)
        self.scale = 1.0

    def scale_limits(self, factor: float) -> None:
        self.scale = factor
        for gate in self.gates:
            gate.limiter.set_scale(factor)
        if self.catalog is None:
            return
        limiter = self.catalog.policy.limiter
        if limiter is not None:
            limiter.set_scale(factor)
        self.catalog.supervisor.set_concurrency_scale(factor)

    def shed(self, priority: str | None) -> None:
        self.shedder.set_level(priority)

    def quarantine_unit(self, unit: str, seconds: float, reason: str) -> bool:
        return self.catalog is not None and self.catalog.supervisor.quarantine(
            unit, seconds, reason
        )


@dataclass(frozen=True, slots=True)
class MeshFacts:
    """What the systems read from the rest of the node (callables: read when shown)."""

    members: Callable[[], Mapping[str, int]]  # state -> count, this node excluded
    mesh_tools: Callable[[], tuple[int, int]]  # (reachable, all) registry tools
    peers_seen: Callable[[], int]
    policies: Callable[[], int]
    routing: Callable[[], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class SignalGrant:
    zone: str
    name: str


class VsmSystems(Service):
    """Channel, S3, S5, shedder, KPIs and viability of one node."""

    def __init__(
        self, config: Config, events: EventStream, loops: LoopSupervisor, audit: AuditSink
    ) -> None:
        vsm = config.vsm
        self._config = config
        self._order = itertools.count(1)
        self.channel = AlgedonicChannel(
            events, threshold=vsm.algedonic_threshold, capacity=vsm.algedonic_queue, clock=time.time
        )
        self.balance = AlgedonicBalance(vsm.algedonic_window_s)
        self.kpis = CallKpis(vsm.kpi_window_s)
        events.subscribe(
            KPI_SUBSCRIBER,
            self.kpis.on_events,
            kinds=(ToolCallFinished,),
            capacity=vsm.event_buffer,
        )
        self.s3 = System3Aggregate(
            self.channel.s3,
            self.balance,
            loops,
            interval_s=vsm.s3_interval_s,
            clock=time.time,
            order=self._next_order,
        )
        self.shedder = LoadShedder(events)
        regulation = vsm.concurrency
        self.limiter_settings = None if regulation is None else regulation.settings()
        # Adaptive concurrency limits of calls entering the mesh here and of calls served
        # for peers (None without `[vsm.concurrency]`); each unit has its own.
        self.entry_gate: EntryGate | None = None
        self.serve_gate: EntryGate | None = None
        if self.limiter_settings is not None:
            # Only with the section: an idle node runs no adaptive limit.
            from vsmcp.node.tools.admission import EntryGate
            from vsmcp.node.vsm.concurrency import AdaptiveLimiter

            now = time.monotonic()
            self.entry_gate = EntryGate(AdaptiveLimiter(ENTRY, self.limiter_settings, now), events)
            self.serve_gate = EntryGate(AdaptiveLimiter(SERVE, self.limiter_settings, now), events)
        gates = [g for g in (self.entry_gate, self.serve_gate) if g is not None]
        self.effectors = NodeEffectors(self.shedder, gates)
        bounds = None if regulation is None else regulation.bound_settings(OVERLOAD_TICK_S)
        governor = None
        if bounds is not None:
            from vsmcp.node.vsm.bounds import BoundGovernor  # only with [vsm.concurrency]

            governor = BoundGovernor(bounds)
        self.overload = OverloadWatch(
            self.limiters,
            self._overload_pain,
            loops,
            calls=lambda: (self.kpis.total_refused, self.kpis.total),
            pain_after_s=DEFAULT_PAIN_AFTER_S if regulation is None else regulation.pain_after_s,
            interval_s=OVERLOAD_TICK_S,
            governor=governor,
            events=events,
        )
        self.s5 = System5(
            self.channel.s5,
            vsm.response_rules,
            self.effectors,
            events=events,
            balance=self.balance,
            loops=loops,
            audit=audit,
            order=self._next_order,
        )
        self._facts: MeshFacts | None = None
        self._allows = zone_allows(config.trust.zones)
        self._grants = {_digest(t.token): SignalGrant(t.zone, t.name) for t in config.mcp.tokens}

    def _next_order(self) -> int:
        return next(self._order)

    def bind(self, catalog: LocalCatalog, facts: MeshFacts) -> None:
        """Once the node's catalog and mesh exist: what the systems act on and read."""
        self.effectors.catalog = catalog
        catalog.supervisor.set_limiter_settings(self.limiter_settings)
        self._facts = facts

    def limiters(self) -> list[AdaptiveLimiter]:
        """Every adaptive concurrency limit of the node: entry, serve, then each unit's."""
        gates = [*self.effectors.gates, *(u.gate for u in self.units())]
        return [g.limiter for g in gates if g is not None]

    def capacity_factor(self) -> float:
        """How far the node is short of capacity (1.0: not at all): the lower of System 5's
        limit factor (its tighten_limit response) and System 3's bound on the adaptive
        limits (moved by the event loop's lag). The recursion guard scales by it."""
        governor = self.overload.governor
        share = 1.0 if governor is None else governor.share
        return min(self.effectors.scale, share)

    def _overload_pain(self, source: str, intensity: float, reason: str) -> None:
        try:
            self.channel.raise_signal(source, "pain", intensity, reason)
        except ChannelFull:
            log.warning("overload: algedonic lane full, pain signal dropped")

    async def start(self) -> None:
        await self.s5.start()
        await self.s3.start()
        await self.overload.start()

    async def stop(self) -> None:
        await self.overload.stop()
        await self.s3.stop()
        await self.s5.stop()

    # -- ways in -----------------------------------------------------------------------

    def on_pattern_match(self, match: Match, action: Action) -> None:
        """The pattern engine's `algedonic` action."""
        assert isinstance(action, AlgedonicAction)
        group = "" if match.group is None else f" (group {match.group})"
        reason = action.reason or f"pattern {match.pattern} matched{group}, count {match.count}"
        try:
            self.channel.raise_signal(
                f"pattern:{match.pattern}", action.valence, action.intensity, reason[:500]
            )
        except ChannelFull:
            log.warning("pattern %s: algedonic lane full, signal dropped", match.pattern)

    def signal_tool(self, arguments: Mapping[str, Any], ctx: CallContext) -> dict[str, Any]:
        """The `vsm.signal` tool; the source is the caller's origin (a named one goes after it)."""
        try:
            signal = self.channel.raise_from(arguments, caller=ctx.origin)
        except SignalError as e:
            raise InvalidArguments("vsm.signal", e.reason, f"arguments.{e.field}") from e
        except ChannelFull as e:
            raise Overloaded(f"algedonic:{e.lane}", self.channel.s5.capacity, 0, 1.0) from e
        return self._accepted(signal)

    def _accepted(self, signal: Signal) -> dict[str, Any]:
        lane = self.channel.lane_for(signal.intensity).name
        return {"accepted": True, "lane": lane, "seq": signal.seq}

    def post_signal(
        self, body: object, authorization: str | None, remote: str | None
    ) -> tuple[int, dict[str, Any]]:
        """`POST /api/algedonic`: (HTTP status, JSON body)."""
        grant = self.caller_grant(authorization, remote)
        if grant is None:
            return 401, {"error": "a bearer token (mcp.tokens) is required"}
        if not self._allows(grant.zone, self._config.vsm.signal_zone):
            return 403, {
                "error": f"zone {grant.zone!r} may not raise signals "
                f"(vsm.signal_zone = {self._config.vsm.signal_zone!r})"
            }
        if not isinstance(body, dict):
            return 400, {"error": "the body must be a JSON object", "field": "body"}
        try:
            signal = self.channel.raise_from(body, caller=f"http:{grant.name}")
        except SignalError as e:
            return 400, {"error": str(e), "field": e.field}
        except ChannelFull as e:
            return 503, {"error": str(e), "lane": e.lane}
        return 202, self._accepted(signal)

    def caller_grant(self, authorization: str | None, remote: str | None) -> SignalGrant | None:
        """The caller as `/mcp` would see it: a bearer token, or a loopback client's zone."""
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer":
                return None
            return self._grants.get(_digest(token.strip()))
        loopback_zone = self._config.mcp.loopback_zone
        if loopback_zone is not None and remote is not None and is_loopback_host(remote):
            return SignalGrant(loopback_zone, "loopback")
        return None

    # -- views -------------------------------------------------------------------------

    def viability_inputs(self) -> ViabilityInputs:
        now = time.time()
        units = self.units()
        running = [u for u in units if u.state is UnitState.RUNNING]
        facts = self._facts
        reachable, mesh_tools = facts.mesh_tools() if facts is not None else (0, 0)
        return ViabilityInputs(
            units_running=len(running),
            units_configured=len(units),
            error_ratio=self.kpis.error_ratio(now),
            latency_p95_ms=self.kpis.latency_ms(now, 95),
            latency_objective_ms=self._config.vsm.latency_objective_ms,
            in_flight=sum(u.running_calls for u in running),
            capacity=sum(u.effective_concurrency for u in running),
            balance=self.balance.balance(now),
            members=dict(facts.members()) if facts is not None else {},
            mesh_tools_reachable=reachable,
            mesh_tools=mesh_tools,
        )

    def scores(self) -> dict[str, float]:
        node, mesh = scores(self.viability_inputs())
        return {"node": node, "mesh": mesh}

    def units(self) -> list[Unit]:
        catalog = self.effectors.catalog
        return [] if catalog is None else list(catalog.supervisor.units.values())

    def view(self) -> dict[str, Any]:
        """Every system's state and the viability (see docs/vsm.md)."""
        now = time.time()
        facts = self._facts
        return {
            "s1": {"units": [u.status() for u in self.units()]},
            "s2": self._s2_view(),
            "s3": {
                "kpis": self.kpis.view(now),
                "algedonic": self.s3.view(),
                "shed_calls": self.shedder.shed,
                "overload": self.overload.view(),
                "concurrency": {g.limiter.name: g.limiter.view() for g in self.effectors.gates},
                "units": {u.name: self._unit_kpis(u, now) for u in self.units()},
            },
            # The planner and the scan are added by the node (`S4Api.view`).
            "s4": {
                "peers_seen": facts.peers_seen() if facts is not None else 0,
                "tools_seen": facts.mesh_tools()[1] if facts is not None else 0,
            },
            "s5": {
                **self.s5.view(),
                "channel": self.channel.stats(),
                "shedding": self.shedder.level,
                "policies": facts.policies() if facts is not None else 0,
            },
            "viability": viability_view(self.viability_inputs()),
        }

    @staticmethod
    def _unit_kpis(unit: Unit, now: float) -> dict[str, Any]:
        kpis = unit.kpis.view(now)
        return {
            **kpis,
            "rate_per_s": round(kpis["calls"] / kpis["window_s"], 3),
            "in_flight": unit.running_calls,
            "waiting": unit.waiting_calls,
            "shed": 0 if unit.gate is None else unit.gate.limiter.refused_total(),
            "limit": None if unit.gate is None else round(unit.gate.limiter.limit, 2),
        }

    def _s2_view(self) -> dict[str, Any]:
        limits = self._config.limits
        catalog = self.effectors.catalog
        limiter = catalog.policy.limiter if catalog is not None else None
        return {
            "limits_scale": self.effectors.scale,
            "rate_limits": {
                "per_origin": _rate(limits.per_origin),
                "per_tool": _rate(limits.per_tool),
                "per_peer": _rate(limits.per_peer),
                "evictions": limiter.evictions() if limiter is not None else {},
            },
            "concurrency": {
                u.name: {"max": u.policy.max_concurrency, "effective": u.effective_concurrency}
                for u in self.units()
            },
            "routing": self._facts.routing() if self._facts is not None else {},
        }


def _rate(limit: RateLimitConfig | None) -> dict[str, float] | None:
    return None if limit is None else {"rate_per_s": limit.rate_per_s, "burst": limit.burst}


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
