"""The tools of the whole mesh behind one `ToolCatalog`: what the MCP gateway serves.

Listing. Local tools, plus the tools of the replicated registry whose provider is
admitted and alive (or suspect), one listing per tool name, filtered by the caller's
zone. A cheap periodic check compares the usable tool set and fires `on_change`
(the gateway turns it into `list_changed`) when it moves.

Calling (entry node). Zone, schema and rate limits are enforced here with the local
catalog's `CallPolicy` (on the remote tool's spec), once per call. A tool this node
offers from a running unit runs here. Otherwise a provider is chosen by
`ProviderSelector`: alive before suspect, by observed latency and calls in flight,
with hysteresis (we stay on the current provider until it fails or another is
clearly better, so traffic does not flap) and a circuit breaker per provider node.
The call leaves as an INVOKE envelope (`node.invoke`) carrying what is left of the
deadline; the provider answers RESULT or ERROR.

Failover. A provider that is dead/zombie/gone, unreachable, not admitted, busy, or
that refuses before running the tool (unknown tool, unit unavailable or overloaded,
its own rate limit) is skipped and the next one tried, at most `MAX_ATTEMPTS` times
within the call's deadline. A provider that does not show it started the call within
`ACCEPT_TIMEOUT_S` (no response, no progress, no start ack) counts as unreachable:
a killed node is usually still "alive" in membership for a while, and this bounds
how long a call waits on it. Never retried: a result (even `isError`), a tool
timeout, a provider error, or a provider that died after it acknowledged the start
(the tool may have run; calls are not assumed idempotent). A call to a provider that
dies within its first `ACK_AFTER_S` may therefore run twice.

Serving (provider node). The effective caller zone is the lower of the claimed zone
and the calling node's certificate zone, so a node cannot escalate; the call runs
through this node's `LocalCatalog`, so its own zones, limits and unit supervision
apply; it gets the remaining deadline; a transport CANCEL cancels it. Progress goes
back as one-way PROGRESS envelopes keyed by the entry node's call id.

Both ends write audit entries: `tool.call` at the entry node, `tool.serve` at the
provider, queued before the answer leaves; with `audit.commit_before_answer`, committed
before it leaves (see `node/store/audit.py`, "Durability"). Calls refused by an adaptive
concurrency limit (`node.vsm.concurrency`) are the exception: counted
(`refused_for_load` in the routing stats, the limiters' counts), `denial` and `tool_call`
events, but no audit entry each, so that a surge is not also a write storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import Callable, Collection, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, Literal

from vsmcp.mesh.certs import ZoneOrder
from vsmcp.mesh.envelope import Context, Envelope, MsgType
from vsmcp.mesh.errors import MeshError
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.mesh.service import Service
from vsmcp.mesh.transport import Priority, RemoteError, RequestTimeoutError, TransportError
from vsmcp.node.errors import NodeError
from vsmcp.node.peers.service import MeshService, Peer, PeerUnavailableError
from vsmcp.node.replication.service import RemoteTool, ReplicationService
from vsmcp.node.routing.calls import ReplyItem
from vsmcp.node.routing.client_relay import ClientRelay, RelayedCall, invoke_fields
from vsmcp.node.routing.degraded import GrayTracker, Key, ProbeAnswer, refused_probe_answer
from vsmcp.node.routing.gray_config import GrayConfig
from vsmcp.node.routing.pinning import MIN_ID_SUFFIX_CHARS, NotOnNode, resolve_pin
from vsmcp.node.routing.variants import (
    AmbiguousTool,
    schema_digest,
    split_variant,
    variant_name,
)
from vsmcp.node.routing.wire import (
    MAX_ATTEMPTS,
    MAX_CAUSALITY_ENTRIES,
    MAX_ID_CHARS,
    CallProgress,
    InvokeCodecError,
    InvokeError,
    InvokeRequest,
    attempts_left,
    decode_error,
    decode_progress,
    decode_request,
    decode_result,
    encode,
    error_from_tool_error,
    tool_error_from,
)
from vsmcp.node.store.audit import AuditLog
from vsmcp.node.tools.errors import (
    ConcurrencyLimited,
    Overloaded,
    ProviderError,
    Shed,
    ShuttingDown,
    ToolError,
    ToolTimeout,
    ToolUnavailable,
    UnknownTool,
)
from vsmcp.node.tools.model import CallContext, ChangeCallback, ToolResult, ToolSpec
from vsmcp.node.tools.offers import client_tool_name, is_offers_tool
from vsmcp.node.tools.registry import LocalCatalog
from vsmcp.node.tools.supervisor import Unit, UnitState
from vsmcp.node.vsm.events import (
    Event,
    MembershipChanged,
    ProviderDegraded,
    RegistryChanged,
    ToolCallFinished,
)
from vsmcp.node.vsm.priority import (
    CRITICAL,
    DEFAULT_PRIORITY,
    PriorityError,
    parse_priority,
)
from vsmcp.node.vsm.priority import Priority as CallPriority
from vsmcp.node.vsm.shedding import LoadShedder
from vsmcp.node.vsm.stream import EventStream

if TYPE_CHECKING:
    from vsmcp.node.tools.admission import EntryGate

log = logging.getLogger(__name__)

DEFAULT_CALL_TIMEOUT_S: Final = 30.0
ACCEPT_TIMEOUT_S: Final = 1.0
ACK_AFTER_S: Final = 0.25
WATCH_INTERVAL_S: Final = 0.25
CHANGE_CHECK_INTERVAL_S: Final = 1.0
FALLBACK_CHECK_INTERVAL_S: Final = 5.0
EVENTS_SUBSCRIBER: Final = "routing"
# The handler only sets a flag: a full buffer is drained (and sets it) soon anyway.
EVENTS_CAPACITY: Final = 1024
MAX_PROGRESS_QUEUE: Final = 64
PROGRESS_FLUSH_S: Final = 0.5
META_PROVIDER: Final = "vsmcp/provider"
MAX_EVENT_REASON_CHARS: Final = 256
META_PROGRESS_SENT: Final = "vsmcp/progressSent"
# Algedonic traffic: never refused for load, whatever class its caller named.
CRITICAL_TOOLS: Final = frozenset({"vsm.signal"})

USABLE_STATES: Final = frozenset({"alive", "suspect"})
GONE_STATES: Final = frozenset({"dead", "zombie", "left"})
# Refusals that happen before the tool runs: another provider may take the call.
REFUSALS_BEFORE_RUN: Final = frozenset(
    {"unknown_tool", "unavailable", "overloaded", "rate_limited", "zone_denied"}
)
# Transport answers that mean the remote handler never ran the tool.
RETRYABLE_REMOTE_REASONS: Final = frozenset({"busy", "no_handler", "handler_error"})
# Error answers that say the provider failed at the work itself (gray failures); others
# (bad arguments, zone, policy) are about the caller and say nothing of the provider.
GRAY_ERROR_REASONS: Final = frozenset({"timeout", "provider_error", "unit_fault", "tool_fault"})
# The built-in tool that runs a provider's S3* probe of one of its tools (gray failures:
# how a degraded provider is checked without sending it real calls).
PROBE_TOOL: Final = "vsm.probe"

# Provider choice.
INITIAL_LATENCY_S: Final = 0.005
LATENCY_ALPHA: Final = 0.2
FAILURE_PENALTY: Final = 4.0
SUSPECT_PENALTY: Final = 4.0
SWITCH_RATIO: Final = 0.5
MIN_DWELL_S: Final = 2.0
DEFAULT_AVOID_S: Final = 1.0
BREAKER_FAILURES: Final = 3
BREAKER_COOLDOWN_S: Final = 2.0
BREAKER_MAX_COOLDOWN_S: Final = 30.0

BreakerState = Literal["closed", "open", "half_open"]


# -- circuit breaker and provider choice (pure: time is passed in) -----------------------


class CircuitBreaker:
    """Per provider node: open after `threshold` consecutive failures; after the
    cool-down one probe call may go (half-open); its success closes the breaker, its
    failure opens it again for twice as long (capped)."""

    __slots__ = ("_cooldown_s", "_failures", "_open_until", "_probing", "cooldown_s", "threshold")

    def __init__(
        self,
        threshold: int = BREAKER_FAILURES,
        cooldown_s: float = BREAKER_COOLDOWN_S,
        max_cooldown_s: float = BREAKER_MAX_COOLDOWN_S,
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._cooldown_s = max_cooldown_s
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    def state(self, now: float) -> BreakerState:
        if self._open_until is None:
            return "closed"
        return "open" if now < self._open_until else "half_open"

    def allows(self, now: float) -> bool:
        state = self.state(now)
        return state == "closed" or (state == "half_open" and not self._probing)

    def retry_after_s(self, now: float) -> float:
        return 0.0 if self._open_until is None else max(0.0, self._open_until - now)

    def on_attempt(self, now: float) -> None:
        if self.state(now) == "half_open":
            self._probing = True

    def on_success(self) -> None:
        self._failures = 0
        self._open_until = None
        self._probing = False
        self.cooldown_s = BREAKER_COOLDOWN_S

    def on_failure(self, now: float) -> None:
        self._failures += 1
        if self._probing:
            self._probing = False
            self.cooldown_s = min(self.cooldown_s * 2, self._cooldown_s)
            self._open_until = now + self.cooldown_s
        elif self._failures >= self.threshold and self._open_until is None:
            self._open_until = now + self.cooldown_s


@dataclass(slots=True)
class ProviderHealth:
    """What this entry node observed of one provider node."""

    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    latency_s: float = INITIAL_LATENCY_S
    inflight: int = 0
    started: int = 0  # calls sent to it so far (System 3's scaler reads it between samples)
    avoid_until: dict[str, float] = field(default_factory=dict)  # tool -> time

    def score(self, state: str) -> float:
        """Lower is better: expected latency under the current load, health-weighted."""
        penalty = SUSPECT_PENALTY if state == "suspect" else 1.0
        return self.latency_s * (1 + self.inflight) * penalty


@dataclass(slots=True)
class _Preferred:
    node_id: str
    since: float


class ProviderSelector:
    """Which provider a call goes to, and in which order the others are tried."""

    def __init__(self) -> None:
        self.health: dict[str, ProviderHealth] = {}
        self._preferred: dict[str, _Preferred] = {}
        self.switches = 0

    def _health(self, node_id: str) -> ProviderHealth:
        health = self.health.get(node_id)
        if health is None:
            health = self.health[node_id] = ProviderHealth()
        return health

    def preferred(self, tool: str) -> str | None:
        pref = self._preferred.get(tool)
        return None if pref is None else pref.node_id

    def avoided(self, tool: str, node_id: str, now: float) -> bool:
        """True while `node_id` recently refused `tool` (it is then tried last)."""
        health = self._health(node_id)
        until = health.avoid_until.get(tool)
        if until is None:
            return False
        if now < until:
            return True
        del health.avoid_until[tool]
        return False

    def order(self, tool: str, candidates: Sequence[tuple[str, str]], now: float) -> list[str]:
        """Providers to try, best first. `candidates` are (node id, membership state).

        Nodes whose breaker is open are left out. Nodes that recently refused this
        tool come last, so a refusal is answered afresh rather than guessed."""
        usable = []
        avoided = []
        for node, state in candidates:
            health = self._health(node)
            if not health.breaker.allows(now):
                continue
            if self.avoided(tool, node, now):
                avoided.append((health.avoid_until[tool], node))
            else:
                usable.append((health.score(state), node, state))
        usable.sort()
        last_resort = [node for _, node in sorted(avoided)]
        if not usable:
            return last_resort
        best_score, best, _ = usable[0]
        chosen = best
        pref = self._preferred.get(tool)
        current = None
        if pref is not None:
            current = next((u for u in usable if u[1] == pref.node_id), None)
        healthy = (
            current is not None
            and current[2] == "alive"
            and self._health(current[1]).breaker.state(now) == "closed"
        )
        if pref is not None and current is not None and healthy:
            clearly_better = best_score < SWITCH_RATIO * current[0]
            if best != pref.node_id and clearly_better and now - pref.since >= MIN_DWELL_S:
                self._set_preferred(tool, best, now)
            else:
                chosen = pref.node_id
        else:
            self._set_preferred(tool, best, now)
        rest = [node for _, node, _ in usable if node != chosen]
        return [chosen, *rest, *last_resort]

    def _set_preferred(self, tool: str, node_id: str, now: float) -> None:
        old = self._preferred.get(tool)
        if old is not None and old.node_id != node_id:
            self.switches += 1
        self._preferred[tool] = _Preferred(node_id, now)

    def on_attempt(self, node_id: str, now: float) -> None:
        health = self._health(node_id)
        health.inflight += 1
        health.started += 1
        health.breaker.on_attempt(now)

    def on_done(self, node_id: str) -> None:
        health = self._health(node_id)
        health.inflight = max(0, health.inflight - 1)

    def on_success(self, node_id: str, elapsed_s: float) -> None:
        health = self._health(node_id)
        health.breaker.on_success()
        health.latency_s += LATENCY_ALPHA * (elapsed_s - health.latency_s)

    def on_refusal(self, tool: str, node_id: str, now: float, retry_after_s: float | None) -> None:
        """The node answered but would not run `tool` now: avoid it for that tool a while."""
        health = self._health(node_id)
        health.breaker.on_success()  # it answered: the node itself is fine
        wait = DEFAULT_AVOID_S if retry_after_s is None else max(0.0, retry_after_s)
        health.avoid_until[tool] = now + min(wait, BREAKER_MAX_COOLDOWN_S)
        self._drop_preferred(node_id, tool)

    def on_failure(self, node_id: str, now: float, elapsed_s: float) -> None:
        health = self._health(node_id)
        health.breaker.on_failure(now)
        health.latency_s = max(health.latency_s, elapsed_s) * FAILURE_PENALTY
        self._drop_preferred(node_id, None)

    def _drop_preferred(self, node_id: str, tool: str | None) -> None:
        for name, pref in list(self._preferred.items()):
            if pref.node_id == node_id and (tool is None or name == tool):
                del self._preferred[name]

    def retain(self, providers: Collection[str], tools: Collection[str], now: float) -> None:
        """Forget providers and tools no longer in the registry, so churn does not grow
        this state. A provider stays while calls to it are in flight or its breaker is
        open, so one that drops out of the registry and back is not trusted afresh."""
        gone = [
            node_id
            for node_id, health in self.health.items()
            if node_id not in providers
            and health.inflight == 0
            and health.breaker.retry_after_s(now) == 0.0
        ]
        for node_id in gone:
            del self.health[node_id]
        for tool in [t for t in self._preferred if t not in tools]:
            del self._preferred[tool]

    def retry_after_s(self, nodes: Sequence[str], tool: str, now: float) -> float | None:
        """When the first of `nodes` may take `tool` again (None: unknown)."""
        waits = []
        for node in nodes:
            health = self._health(node)
            wait = health.breaker.retry_after_s(now)
            until = health.avoid_until.get(tool)
            if until is not None:
                wait = max(wait, until - now)
            waits.append(max(0.0, wait))
        return min(waits) if waits else None


# -- errors --------------------------------------------------------------------------------


class NoProvider(ToolUnavailable):
    """No provider of the tool is alive (or every one is refusing right now)."""

    def __init__(self, tool: str, states: Mapping[str, str | None], retry_after_s: float | None):
        detail = ", ".join(f"{node[-8:]}={state}" for node, state in sorted(states.items()))
        retry = f"; retry after {retry_after_s:.3f} s" if retry_after_s is not None else ""
        ToolError.__init__(
            self,
            f"No provider alive for tool {tool!r}"
            + (f" (providers: {detail})" if detail else "")
            + retry,
            {
                "tool": tool,
                "unit": "mesh",
                "state": "no_provider",
                "providers": dict(states),
                "retry_after_s": None if retry_after_s is None else round(retry_after_s, 3),
            },
        )


class _Retry(NodeError):
    """This attempt failed before the tool ran; the next provider may be tried.

    `node` says whether the node itself failed (counts against its breaker)."""

    def __init__(self, error: ToolError, *, reason: str, node: bool) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.node_failure = node


# -- the catalog ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Remote:
    tool: RemoteTool
    spec: ToolSpec
    digest: str  # of its input schema: which variant it is (node/routing/variants.py)
    metadata_digest: str  # of its metadata (title, annotations, ...): for `_check_changed`


@dataclass(slots=True)
class _Variant:
    """One input schema a tool name is offered with: this node's own and/or remote
    providers (usable ones, with their membership states)."""

    spec: ToolSpec
    local: bool
    remote: list[tuple[_Remote, str]] = field(default_factory=list)


@dataclass(eq=False)
class _Pending:
    """One attempt of a remote call, as the entry node tracks it."""

    call_id: int
    provider: str
    deadline: float
    progress: Callable[[float, float | None, str | None], Any] | None
    scope: asyncio.Timeout | None = None
    accepted: bool = False
    aborted: str | None = None
    queue: asyncio.Queue[CallProgress] | None = None
    forwarder: asyncio.Task[None] | None = None
    arrived: int = 0
    expected: int = 0
    arrival: asyncio.Event = field(default_factory=asyncio.Event)
    tool: str = ""
    # When the attempt was sent, or its last progress arrived (gray failures).
    started: float = 0.0
    # Probes keep their own selector: a hung tool's probes must not open the breaker
    # of its whole node (its other tools may be fine).
    selector: ProviderSelector = field(default_factory=ProviderSelector)
    # Its outcome was recorded for gray-failure detection (once per attempt).
    observed: bool = False
    # The caller's way back, for the provider's logs and requests (`client_relay`).
    relayed: RelayedCall | None = None

    def accept(self) -> None:
        if not self.accepted:
            self.accepted = True
            if self.scope is not None and not self.scope.expired():
                self.scope.reschedule(self.deadline)

    def abort(self, why: str, now: float) -> None:
        if self.aborted is None and self.scope is not None and not self.scope.expired():
            self.aborted = why
            self.scope.reschedule(now)


def _remote_spec(tool: RemoteTool) -> ToolSpec:
    return ToolSpec(
        name=tool.name,
        description=tool.description,
        input_schema=tool.input_schema,
        zone=tool.zone,
        provider="remote",
    ).with_metadata(tool.metadata)


CallGate = Callable[[CallContext, str | None, str], None]
"""`gate(ctx, entry_node, tool)`: raise a `ToolError` to refuse (`entry_node`: the node
that forwarded a served call)."""


class MeshCatalog(Service):
    """A `ToolCatalog` over the local units and the mesh. Async context manager."""

    def __init__(
        self,
        *,
        local: LocalCatalog,
        mesh: MeshService,
        replication: ReplicationService,
        node_id: str,
        zones: ZoneOrder,
        audit: AuditLog,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
        loops: LoopSupervisor | None = None,
        commit_before_answer: bool = False,
        events: EventStream | None = None,
        node_name: str = "",
        gray: GrayConfig | None = None,
    ) -> None:
        self._loops = loops or LoopSupervisor()
        self._events = events
        # Registry and membership events mark the usable tool set stale; the watch loop
        # then re-reads it at its next tick (and every FALLBACK_CHECK_INTERVAL_S anyway).
        # Without a stream it is re-read every CHANGE_CHECK_INTERVAL_S.
        self._stale = True
        self.local = local
        self._mesh = mesh
        self._replication = replication
        self._node_id = node_id
        # This node's own name, for calls pinned to it by name (`vsmcp/node`).
        self.node_name = node_name or node_id[-MIN_ID_SUFFIX_CHARS:]
        self._zones = zones
        self._audit = audit
        self._call_timeout_s = call_timeout_s
        # Config audit.commit_before_answer: a call's answer waits for its entry's commit.
        self._commit_before_answer = commit_before_answer
        self.selector = ProviderSelector()
        self.gray = GrayTracker(gray or GrayConfig())
        # Called with the keys that became locally degraded or recovered (the signed
        # observation exchange publishes or revokes). Set by the node.
        self.on_gray_change: Callable[[Key, bool, str], None] | None = None
        self._probing: set[Key] = set()
        self._probe_selector = ProviderSelector()
        self.stats: dict[str, int] = {}
        self._callbacks: list[ChangeCallback] = []
        self._remote: dict[str, list[_Remote]] = {}
        # This node's tools' schema digests (name -> (spec, digest)), kept per spec object.
        # name -> (spec, digest of its input schema, digest of its metadata)
        self._local_digests: dict[str, tuple[ToolSpec, str, str]] = {}
        self._local_units: dict[str, tuple[Unit, ToolSpec]] = {}
        self._fingerprint: frozenset[tuple[str, str, str, str, str]] = frozenset()
        self._pending: dict[int, _Pending] = {}
        self._call_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        # Entry-node calls in flight (local or through the mesh), for `cancel_calls`.
        self._calls: set[asyncio.Task[Any]] = set()
        self._cancelled_calls: set[asyncio.Task[Any]] = set()
        self._closing = False
        # System 5's load shedding at the entry (set by the node).
        self.shedder: LoadShedder | None = None
        # Adaptive concurrency limits (`vsm.concurrency`; set by the node): calls entering
        # the mesh here, and calls this node serves for peers.
        self.entry_limit: EntryGate | None = None
        self.serve_limit: EntryGate | None = None
        # The immune system's check of every call (entry and served): raises
        # `PolicyBlocked` for a blocked origin, entry node or tool. Set by the node.
        self.gate: CallGate | None = None
        # Tools declared `scale` (node/children/scale.py): a call that finds the local
        # unit full goes to another provider first. Set by the node.
        self.spill: frozenset[str] = frozenset()
        self._unsubscribe_local = local.on_change(self._local_changed)
        self._reindex_local()
        # Providers' logs and server-to-client requests for our callers.
        self.client_relay = ClientRelay(self._client_of)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._closing = False
        self._mesh.handle_requests(MsgType.INVOKE, self._serve)
        self._mesh.handle_oneway(MsgType.PROGRESS, self._on_progress)
        self._mesh.handle_requests(MsgType.CLIENT_REQUEST, self.client_relay.serve)
        self._refresh_remote()
        self._fingerprint = self._usable_fingerprint()
        if self._events is not None:
            self._events.subscribe(
                EVENTS_SUBSCRIBER,
                self._on_events,
                kinds=(RegistryChanged, MembershipChanged),
                capacity=EVENTS_CAPACITY,
            )
        watch = self._loops.spawn("routing-watch", self._watch)
        self._tasks.add(watch)
        watch.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._unsubscribe_local()
        if self._events is not None:
            await self._events.unsubscribe(EVENTS_SUBSCRIBER)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cancel_calls(self) -> None:
        """The first step of shutdown: end every call in flight with `ShuttingDown`
        (local ones and those waiting on other nodes) and refuse new ones."""
        self._closing = True
        self.local.supervisor.cancel_calls()
        for task in self._calls - self._cancelled_calls:
            self._cancelled_calls.add(task)
            task.cancel()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _publish_call(
        self,
        tool: str,
        provider: str | None,
        ctx: CallContext,
        latency_ms: float,
        outcome: str,
        reason: str | None,
    ) -> None:
        """A `tool_call` event (an append to the stream's buffers: never blocks)."""
        if self._events is not None:
            self._events.publish(
                ToolCallFinished(
                    ts=time.time(),
                    tool=tool,
                    provider=provider or "",
                    origin=ctx.origin,
                    zone=ctx.caller_zone,
                    latency_ms=latency_ms,
                    outcome=outcome,
                    reason=reason,
                    entry_origin=ctx.entry_origin,
                    priority=ctx.priority,
                )
            )

    # -- the tool set -----------------------------------------------------------------------

    def _local_changed(self) -> None:
        self._reindex_local()
        self._check_changed()

    def _reindex_local(self) -> None:
        # The same ownership rule as LocalCatalog: the first unit declaring a name wins.
        owners: dict[str, tuple[Unit, ToolSpec]] = {}
        for unit in self.local.supervisor.units.values():
            for spec in unit.known_tools():
                owners.setdefault(spec.name, (unit, spec))
        self._local_units = owners
        self._local_digests = {n: d for n, d in self._local_digests.items() if n in owners}

    def _refresh_remote(self) -> None:
        old = self._remote
        index: dict[str, list[_Remote]] = {}
        for tool in self._replication.tools():
            if tool.provider == self._node_id:
                continue  # our own announcements: the local catalog is authoritative
            previous = next((r for r in old.get(tool.name, ()) if r.tool == tool), None)
            entry = previous or _Remote(
                tool,
                _remote_spec(tool),
                schema_digest(tool.input_schema),
                schema_digest(tool.metadata),
            )
            index.setdefault(tool.name, []).append(entry)
        for entries in index.values():
            entries.sort(key=lambda r: r.tool.provider)
        self._remote = index
        providers = {r.tool.provider for entries in index.values() for r in entries}
        self.selector.retain(providers, index.keys(), asyncio.get_running_loop().time())
        for key in self.gray.retain(providers):
            self._gray_changed(key, degraded=False, reason="gone from the registry")

    def _state(self, node_id: str) -> str | None:
        if node_id not in self._mesh.peers:
            return None
        return self._mesh.member_state(node_id)

    def _states(self, entries: Sequence[_Remote]) -> dict[str, str | None]:
        """Each provider's state, for error messages (not on the success path)."""
        return {r.tool.provider: self._state(r.tool.provider) for r in entries}

    def _usable_remote(self, name: str, digest: str | None = None) -> list[tuple[_Remote, str]]:
        out = []
        for remote in self._variant_entries(name, digest):
            state = self._state(remote.tool.provider)
            if state in USABLE_STATES:
                out.append((remote, state))
        return out

    def routes_to(self, name: str, node_id: str) -> bool:
        """Whether calls of `name` may go to the provider `node_id` (alive, indexed)."""
        return any(r.tool.provider == node_id for r, _ in self._usable_remote(name))

    def _spill_targets(self, name: str, digest: str) -> list[str]:
        """Providers of `name`'s variant `digest` a full local unit may spill to: those
        not refusing it right now (a refusal is not asked again within its backoff)."""
        now = asyncio.get_running_loop().time()
        return [
            remote.tool.provider
            for remote, _ in self._usable_remote(name, digest)
            if not self.selector.avoided(name, remote.tool.provider, now)
        ]

    def _running_local(self, name: str) -> tuple[Unit, ToolSpec] | None:
        entry = self._local_units.get(name)
        if entry is None or entry[0].state is not UnitState.RUNNING:
            return None
        return entry

    def _local_digest(self, spec: ToolSpec) -> str:
        return self._local_digests_of(spec)[1]

    def _local_digests_of(self, spec: ToolSpec) -> tuple[ToolSpec, str, str]:
        cached = self._local_digests.get(spec.name)
        if cached is None or cached[0] is not spec:
            cached = (spec, schema_digest(spec.input_schema), schema_digest(spec.metadata()))
            self._local_digests[spec.name] = cached
        return cached

    def _variants(self, name: str, own: ToolSpec | None) -> dict[str, _Variant]:
        """The input schemas `name` is offered with (digest -> variant): this node's own
        (`own`, a running unit's) and the usable remote providers'."""
        out: dict[str, _Variant] = {}
        if own is not None:
            out[self._local_digest(own)] = _Variant(own, local=True)
        for remote, state in self._usable_remote(name):
            variant = out.get(remote.digest)
            if variant is None:
                variant = out[remote.digest] = _Variant(remote.spec, local=False)
            variant.remote.append((remote, state))
        return out

    def _listed(self) -> Iterator[tuple[str, str, _Variant]]:
        """(listed name, digest, variant) of every tool usable here, whoever asks:
        `<name>` for a name with one variant, `<name>.<digest>` for each of several."""
        own = {spec.name: spec for spec in self.local.available_tools()}
        for name in own.keys() | self._remote.keys():
            variants = self._variants(name, own.get(name))
            for digest, variant in variants.items():
                yield (name if len(variants) == 1 else variant_name(name, digest)), digest, variant

    def _usable_fingerprint(self) -> frozenset[tuple[str, str, str, str, str]]:
        """What a tools/list shows of every usable tool (its metadata as a digest, the
        same canonical one as a schema's): a change of any is a tools/list_changed."""
        return frozenset(
            (listed, variant.spec.zone, variant.spec.description, digest, metadata)
            for listed, digest, variant, metadata in self._listed_with_metadata()
        )

    def _listed_with_metadata(self) -> Iterator[tuple[str, str, _Variant, str]]:
        for listed, digest, variant in self._listed():
            if variant.local:
                metadata = self._local_digests_of(variant.spec)[2]
            else:
                metadata = variant.remote[0][0].metadata_digest
            yield listed, digest, variant, metadata

    def _check_changed(self) -> None:
        fingerprint = self._usable_fingerprint()
        if fingerprint == self._fingerprint:
            return
        self._fingerprint = fingerprint
        for callback in list(self._callbacks):
            callback()

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def list_tools(self, ctx: CallContext) -> list[ToolSpec]:
        return self._tools(ctx, offers=False)

    def list_offer_tools(self, ctx: CallContext) -> list[ToolSpec]:
        """The offers tools (resources, prompts: `node.tools.offers`) `ctx` may use."""
        return self._tools(ctx, offers=True)

    def all_offer_tools(self) -> list[ToolSpec]:
        """Every usable offers tool, whoever asks (the gateway refuses one by zone)."""
        return self._tools(None, offers=True)

    def _tools(self, ctx: CallContext | None, *, offers: bool) -> list[ToolSpec]:
        policy = self.local.policy
        tools: dict[str, ToolSpec] = {}
        for listed, _digest, variant in self._listed():
            if is_offers_tool(listed) != offers:
                continue
            # A call of this node's own variant runs here first: listed only if this caller
            # may call it here; a remote one, as the first provider the caller may call.
            candidates = [variant.spec] if variant.local else [r.spec for r, _ in variant.remote]
            spec = next((c for c in candidates if ctx is None or policy.visible(c, ctx)), None)
            if spec is not None:
                tools[listed] = spec if listed == spec.name else replace(spec, name=listed)
        return [tools[name] for name in sorted(tools)]

    def _on_events(self, batch: list[Event]) -> None:
        """Registry or membership changed: the usable tool set may have moved."""
        self._stale = True

    async def _watch(self) -> None:
        """Abort attempts on providers membership gave up on; notice tool-set changes."""
        loop = asyncio.get_running_loop()
        since_check = 0.0
        # With the event stream, the set is re-read when an event says it may have
        # changed; the periodic read is a backstop (an event dropped by a full buffer).
        period = FALLBACK_CHECK_INTERVAL_S if self._events is not None else CHANGE_CHECK_INTERVAL_S
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = loop.time()
            for pending in list(self._pending.values()):
                state = self._state(pending.provider)
                if state is None or state in GONE_STATES:
                    pending.abort(state or "gone", now)
                elif not pending.observed and now - pending.started > self.gray.objective_s(
                    pending.tool
                ):
                    self._observe(pending, bad=True, reason="still running past its objective")
            for key in self.gray.probes_due(now):
                if key not in self._probing:
                    self._probing.add(key)
                    self._spawn(self._probe(key), f"gray-probe-{key[1]}")
            since_check += WATCH_INTERVAL_S
            signalled = self._events is not None and self._stale
            if signalled or since_check >= period:
                self._count("tool_set_checks_on_event" if signalled else "tool_set_checks_periodic")
                since_check = 0.0
                self._stale = False
                self._refresh_remote()
                self._check_changed()

    # -- calls (entry node) ----------------------------------------------------------------

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any], ctx: CallContext
    ) -> ToolResult:
        """A client's call, from any entry (MCP and its MQTT and AMQP carriers, Telegram,
        System 4): an offers tool is unknown to it (`client_tool_name`)."""
        return await self._entry_call(client_tool_name(name), arguments, ctx)

    async def call_offers_tool(
        self, name: str, arguments: Mapping[str, Any], ctx: CallContext
    ) -> ToolResult:
        """A resources/prompts/completion request, as a call of the offers tool `name`,
        here or on another node."""
        if not is_offers_tool(name):
            raise UnknownTool(name)
        return await self._entry_call(name, arguments, ctx)

    async def _entry_call(
        self, name: str, arguments: Mapping[str, Any], ctx: CallContext
    ) -> ToolResult:
        if self._closing:
            raise ShuttingDown(name)
        loop = asyncio.get_running_loop()
        started = loop.time()
        tried: list[str] = []
        outcome = "ok"
        reason: str | None = None
        # A refusal for load is counted, evented and in S3's KPIs, but not one audit
        # entry each: a surge must not turn into a write storm on the audit log.
        unaudited = False
        task = asyncio.current_task()
        if task is not None:
            self._calls.add(task)
        try:
            if self.gate is not None:
                self.gate(ctx, None, name)
            if name in CRITICAL_TOOLS:
                ctx = ctx.with_priority(CRITICAL)
            self._shed(name, ctx)
            result = await self._admitted(
                self.entry_limit, name, ctx, self._call(name, arguments, ctx, tried)
            )
            if result.get("isError"):
                outcome = "error_result"
            return result
        except ToolError as e:
            outcome = e.reason
            reason = _reason_text(e)
            unaudited = isinstance(e, ConcurrencyLimited)
            raise
        except asyncio.CancelledError:
            if task is None or task not in self._cancelled_calls or task.uncancel() > 0:
                outcome = "cancelled"
                raise
            # Our own cancel (cancel_calls), and no one else's: the caller is told why.
            outcome = ShuttingDown.reason
            raise ShuttingDown(name) from None
        finally:
            if task is not None:
                self._calls.discard(task)
                self._cancelled_calls.discard(task)
            latency_ms = round((loop.time() - started) * 1000, 3)
            provider = tried[-1] if tried else None
            self._publish_call(name, provider, ctx, latency_ms, outcome, reason)
            data = {
                "tool": name,
                "provider": provider,
                "attempts": len(tried),
                "origin": ctx.origin,
                "zone": ctx.caller_zone,
                "trace_id": ctx.trace_id,
                "causality": list(ctx.causality),
                "outcome": outcome,
                "latency_ms": latency_ms,
            }
            if unaudited:
                self._count("refused_for_load")
            elif outcome == "cancelled":
                # Do not wait inside a cancelled task: the entry is written on the side.
                self._spawn(self._append_audit("tool.call", ctx.caller_id, data), "audit-call")
            else:
                await self._append_audit("tool.call", ctx.caller_id, data)

    def _shed(self, name: str, ctx: CallContext) -> None:
        shedder = self.shedder
        if shedder is None or shedder.level is None:
            return
        if shedder.refuses(
            ctx.priority,
            origin=ctx.origin,
            zone=ctx.caller_zone,
            tool=name,
            entry_origin=ctx.entry_origin,
        ):
            raise Shed(name, ctx.priority, shedder.level)

    @staticmethod
    async def _admitted(
        gate: EntryGate | None, name: str, ctx: CallContext, call: Coroutine[Any, Any, ToolResult]
    ) -> ToolResult:
        """Run `call` within `gate`'s adaptive limit (refused at once when it has no room).
        Only calls that ran (a result, or a timeout) feed the limit: a refusal further in
        says nothing of this entry's latency."""
        if gate is None:
            return await call
        try:
            started = gate.admit(ctx, name)
        except ToolError:
            call.close()  # never awaited: no "coroutine was never awaited" warning
            raise
        ran = False
        try:
            result = await call
            ran = True
            return result
        except ToolTimeout:
            ran = True
            raise
        finally:
            gate.done(started, sample=ran)

    def _known(self, name: str) -> bool:
        return name in self._local_units or name in self._remote

    def _split_variant(self, name: str) -> tuple[str, str] | None:
        """(tool name, schema digest) when `name` is a variant's listed name
        (`<name>.<digest>`, node/routing/variants.py) and no tool's own name."""
        if self._known(name):
            return None
        split = split_variant(name)
        if split is None:
            return None
        if not self._known(split[0]):
            self._refresh_remote()
        return split if self._known(split[0]) else None

    def _variant_entries(self, name: str, digest: str | None) -> list[_Remote]:
        entries = self._remote.get(name, [])
        return entries if digest is None else [r for r in entries if r.digest == digest]

    async def _call(
        self, name: str, arguments: Mapping[str, Any], ctx: CallContext, tried: list[str]
    ) -> ToolResult:
        listed = name
        digest: str | None = None
        split = self._split_variant(name)
        if split is not None:
            name, digest = split
        if ctx.pinned_node is not None:
            return await self._call_pinned(name, arguments, ctx, tried, ctx.pinned_node, digest)
        local = self._running_local(name)
        if local is not None and digest in (None, self._local_digest(local[1])):
            unit, spec = local
            # Failover goes only to replicas of this node's own schema.
            digest = self._local_digest(spec)
            self.local.policy.admit(spec, arguments, ctx)
            # One attempt is kept for the local unit (MAX_ATTEMPTS in all).
            spill_attempts = attempts_left(tried) - 1
            if (
                name in self.spill
                and not unit.slot_free
                and spill_attempts > 0
                and self._spill_targets(name, digest)
            ):
                # A `scale` tool whose unit is full: its replicas (the children System 3
                # spawned for it) take the call; when they refuse too, it queues here.
                self._count("spill")
                try:
                    return await self._call_remote(
                        name,
                        arguments,
                        ctx,
                        tried,
                        admitted=True,
                        digest=digest,
                        max_attempts=spill_attempts,
                        skip_avoided=True,
                    )
                except (ToolUnavailable, Overloaded):
                    self._count("spill_back")
            tried.append(self._node_id)
            try:
                return await unit.call(name, arguments, ctx)
            except (ToolUnavailable, Overloaded) as e:
                # Refused before it ran (unit down or full): the mesh may take it. The
                # index lags the registry by up to CHANGE_CHECK_INTERVAL_S: look again.
                if not self._usable_remote(name, digest):
                    self._refresh_remote()
                if not self._usable_remote(name, digest):
                    raise
                self._count("local_failover")
                return await self._call_remote(
                    name, arguments, ctx, tried, admitted=True, first_error=e, digest=digest
                )
        if not self._variant_entries(name, digest):
            self._refresh_remote()
        if not self._variant_entries(name, digest):
            declared = self._local_units.get(name)
            if digest is not None and (
                declared is None or self._local_digest(declared[1]) != digest
            ):
                raise UnknownTool(listed)
            # Offered nowhere else: the local catalog names the precise problem
            # (unknown tool, or the state of the unit that declares it).
            return await self.local.call_any(name, arguments, ctx)
        return await self._call_remote(name, arguments, ctx, tried, admitted=False, digest=digest)

    async def _call_pinned(
        self,
        name: str,
        arguments: Mapping[str, Any],
        ctx: CallContext,
        tried: list[str],
        pin: str,
        digest: str | None = None,
    ) -> ToolResult:
        """The call on the node `pin` names, and nowhere else (no failover); `digest`:
        only if that node offers the variant with this schema."""
        node_id = resolve_pin(
            pin,
            name,
            self_id=self._node_id,
            self_name=self.node_name,
            known=self._mesh.peers,
            names=self._mesh.peer_names(),
        )
        if node_id == self._node_id:
            local = self._running_local(name)
            declared = self._local_units.get(name)
            if declared is not None and digest not in (None, self._local_digest(declared[1])):
                raise NotOnNode(variant_name(name, digest or ""), node_id, pin)
            if local is None:
                if declared is None:
                    raise NotOnNode(name, node_id, pin)
                # Declared here but not running: the local catalog names its state.
                return await self.local.call_any(name, arguments, ctx)
            unit, spec = local
            self.local.policy.admit(spec, arguments, ctx)
            tried.append(node_id)
            return await unit.call(name, arguments, ctx)
        if not any(r.tool.provider == node_id for r in self._remote.get(name, ())):
            self._refresh_remote()
        entries = [r for r in self._variant_entries(name, digest) if r.tool.provider == node_id]
        policy = self.local.policy
        visible = [r for r in entries if policy.visible(r.spec, ctx)]
        if not visible:
            raise NotOnNode(name if digest is None else variant_name(name, digest), node_id, pin)
        policy.admit(visible[0].spec, arguments, ctx)
        state = self._state(node_id)
        if state not in USABLE_STATES:
            raise NoProvider(name, {node_id: state}, None)
        ctx = ctx.with_timeout(self._call_timeout_s)
        tried.append(node_id)
        try:
            return await self._attempt(
                node_id, name, arguments, ctx, ctx.remaining_s() or 0.0, attempt=len(tried)
            )
        except _Retry as r:
            raise r.error from None

    async def _call_remote(
        self,
        name: str,
        arguments: Mapping[str, Any],
        ctx: CallContext,
        tried: list[str],
        *,
        admitted: bool,
        first_error: ToolError | None = None,
        digest: str | None = None,
        max_attempts: int | None = None,
        skip_avoided: bool = False,
    ) -> ToolResult:
        """`digest`: only providers of that variant; None: of the one variant the caller
        may use (several: `AmbiguousTool`). Nodes in `tried` are not asked again;
        `max_attempts` caps this call's attempts below what `attempts_left` allows;
        `skip_avoided`: leave out providers refusing the tool right now."""
        loop = asyncio.get_running_loop()
        entries = self._variant_entries(name, digest)
        usable = self._usable_remote(name, digest)
        policy = self.local.policy
        allowed = [(r, s) for r, s in usable if policy.visible(r.spec, ctx)]
        if digest is None and len(digests := {r.digest for r, _ in allowed}) > 1:
            raise AmbiguousTool(name, [variant_name(name, d) for d in digests])
        if not admitted:
            # One spec object per name keeps the validator's compiled schema cached.
            representative = (allowed or usable)[0][0] if (allowed or usable) else entries[0]
            policy.admit(representative.spec, arguments, ctx)
        nodes = [(r.tool.provider, state) for r, state in allowed]
        now = loop.time()
        order = [
            node
            for node in self.selector.order(name, nodes, now)
            if node not in tried and not (skip_avoided and self.selector.avoided(name, node, now))
        ]
        # Degraded providers (gray failures) are tried only when every one is degraded.
        gray = self.gray
        order = sorted(order, key=lambda node: gray.is_degraded(node, name))
        if not order:
            if first_error is not None:
                raise first_error
            wait = self.selector.retry_after_s([n for n, _ in nodes], name, loop.time())
            raise NoProvider(name, self._states(entries), wait if nodes else None)
        ctx = ctx.with_timeout(self._call_timeout_s)
        budget = ctx.remaining_s() or 0.0
        last: ToolError | None = first_error
        failures: dict[str, str] = {}
        # At most MAX_ATTEMPTS in all: a local unit that refused counts as one.
        attempts = attempts_left(tried)
        if max_attempts is not None:
            attempts = min(attempts, max_attempts)
        for node_id in order[:attempts]:
            remaining = ctx.remaining_s()
            if remaining is not None and remaining <= 0:
                raise ToolTimeout(name, budget)
            tried.append(node_id)
            try:
                return await self._attempt(
                    node_id, name, arguments, ctx, budget, attempt=len(tried)
                )
            except _Retry as r:
                self._count("failover")
                log.info("tool %s: provider %s failed (%s); trying the next", name, node_id, r)
                last = r.error
                if r.node_failure:
                    failures[node_id] = r.reason
        if last is None or (failures and tried[-1] in failures):
            described = {
                node: f"{state}, {failures[node]}" if node in failures else state
                for node, state in self._states(entries).items()
            }
            now = loop.time()
            raise NoProvider(name, described, self.selector.retry_after_s(order, name, now))
        raise last

    async def _attempt(
        self,
        node_id: str,
        name: str,
        arguments: Mapping[str, Any],
        ctx: CallContext,
        budget: float,
        *,
        attempt: int,
        selector: ProviderSelector | None = None,
    ) -> ToolResult:
        loop = asyncio.get_running_loop()
        now = loop.time()
        selector = selector or self.selector
        deadline = ctx.deadline if ctx.deadline is not None else now + self._call_timeout_s
        remaining = max(0.001, deadline - now)
        pending = _Pending(
            next(self._call_ids),
            node_id,
            deadline,
            ctx.progress,
            tool=name,
            started=now,
            selector=selector,
            relayed=RelayedCall(node_id, ctx.client, deadline),
        )
        request = InvokeRequest(
            call_id=pending.call_id,
            tool=name,
            arguments=dict(arguments),
            caller_id=ctx.caller_id[:MAX_ID_CHARS],
            caller_zone=ctx.caller_zone[:MAX_ID_CHARS],
            origin=ctx.origin[:MAX_ID_CHARS],
            trace_id=ctx.trace_id[:MAX_ID_CHARS],
            causality=tuple(c[:MAX_ID_CHARS] for c in ctx.causality[-MAX_CAUSALITY_ENTRIES:]),
            timeout_ms=max(1, int(remaining * 1000)),
            progress=ctx.progress is not None,
            priority=ctx.priority,
            attempt=min(MAX_ATTEMPTS, max(1, attempt)),
            **invoke_fields(ctx.client),
        )
        context = Context(origin=request.origin, trace_id=ctx.trace_id.encode()[:64])
        self._pending[pending.call_id] = pending
        selector.on_attempt(node_id, now)
        try:
            try:
                async with asyncio.timeout_at(min(now + ACCEPT_TIMEOUT_S, deadline)) as scope:
                    pending.scope = scope
                    reply = await self._mesh.request(
                        node_id,
                        MsgType.INVOKE,
                        encode(request),
                        timeout_s=remaining,
                        context=context,
                    )
            except (TimeoutError, TransportError, PeerUnavailableError, MeshError) as e:
                raise self._attempt_failed(pending, name, e, loop.time() - now, budget) from e
            elapsed = loop.time() - now
            result = self._answer(pending, name, reply, elapsed)
            await self._flush_progress(pending, result)
            return result
        finally:
            del self._pending[pending.call_id]
            if pending.relayed is not None:
                pending.relayed.end()  # a failed-over attempt's requests end with it
            selector.on_done(node_id)
            if pending.forwarder is not None:
                pending.forwarder.cancel()

    def _attempt_failed(
        self, pending: _Pending, name: str, error: BaseException, elapsed: float, budget: float
    ) -> ToolError | _Retry:
        """What a failed attempt means: retry elsewhere (`_Retry`) or the call's error."""
        loop = asyncio.get_running_loop()
        node_id = pending.provider
        now = loop.time()
        if isinstance(error, RemoteError) and error.reason == "busy":
            pending.selector.on_refusal(name, node_id, now, None)
            return _Retry(
                NoProvider(name, {node_id: "busy"}, DEFAULT_AVOID_S), reason="busy", node=False
            )
        pending.selector.on_failure(node_id, now, elapsed)
        if elapsed >= self.gray.objective_s(name) or not isinstance(error, TimeoutError):
            # A timeout shorter than the objective is the caller's deadline, not news
            # about the provider.
            self._observe(pending, bad=True, reason=type(error).__name__)
        if now >= pending.deadline or isinstance(error, RequestTimeoutError):
            return ToolTimeout(name, budget)
        if isinstance(error, RemoteError) and error.reason not in RETRYABLE_REMOTE_REASONS:
            return ProviderError(name, f"provider {node_id} answered {error.reason}")
        reason = (
            f"went {pending.aborted}"
            if pending.aborted
            else f"no answer within {ACCEPT_TIMEOUT_S:g} s"
            if isinstance(error, TimeoutError)
            else getattr(error, "reason", type(error).__name__)
        )
        if pending.accepted:
            # It started the tool and then failed us: the tool may have run. No retry.
            return ProviderError(
                name,
                f"provider {node_id} {reason} after it started the call; not retried "
                "(the tool may have run)",
            )
        return _Retry(NoProvider(name, {node_id: reason}, None), reason=reason, node=True)

    def _answer(self, pending: _Pending, name: str, reply: ReplyItem, elapsed: float) -> ToolResult:
        node_id = pending.provider
        loop_now = asyncio.get_running_loop().time()
        if reply.type == MsgType.RESULT:
            try:
                result = decode_result(reply.payload)
            except InvokeCodecError as e:
                pending.selector.on_failure(node_id, loop_now, elapsed)
                raise ProviderError(name, f"provider {node_id} sent {e}") from None
            pending.selector.on_success(node_id, elapsed)
            silent = loop_now - pending.started  # since it was sent or its last progress
            self._observe(
                pending,
                bad=silent > self.gray.objective_s(name),
                reason=f"answered in {elapsed:.3f} s",
            )
            meta = result.get("_meta")
            meta = dict(meta) if isinstance(meta, dict) else {}
            pending.expected = _int(meta.pop(META_PROGRESS_SENT, 0))
            meta[META_PROVIDER] = node_id
            result["_meta"] = meta
            return result
        if reply.type == MsgType.ERROR:
            try:
                error = tool_error_from(decode_error(reply.payload))
            except InvokeCodecError as e:
                pending.selector.on_failure(node_id, loop_now, elapsed)
                raise ProviderError(name, f"provider {node_id} sent {e}") from None
            if error.reason in REFUSALS_BEFORE_RUN:
                retry = error.data.get("retry_after_s")
                wait = float(retry) if isinstance(retry, int | float) else None
                pending.selector.on_refusal(name, node_id, loop_now, wait)
                raise _Retry(error, reason=error.reason, node=False)
            pending.selector.on_success(node_id, elapsed)
            self._observe(pending, bad=error.reason in GRAY_ERROR_REASONS, reason=error.reason)
            raise error
        pending.selector.on_failure(node_id, loop_now, elapsed)
        raise ProviderError(name, f"provider {node_id} answered {reply.type.name}")

    # -- gray failures (node/routing/degraded.py) ----------------------------------------

    def _observe(self, pending: _Pending, *, bad: bool, reason: str) -> None:
        """Record one attempt's outcome (once) for gray-failure detection."""
        if pending.observed or pending.tool == PROBE_TOOL:
            return
        pending.observed = True
        now = asyncio.get_running_loop().time()
        if self.gray.record(pending.provider, pending.tool, bad=bad, reason=reason, now=now):
            key = (pending.provider, pending.tool)
            self._gray_changed(key, degraded=True, reason=self.gray.locally_degraded()[key])

    def _gray_changed(self, key: Key, *, degraded: bool, reason: str) -> None:
        provider, tool = key
        self._count("gray_degraded" if degraded else "gray_recovered")
        log.warning(
            "gray failure: %s on %s %s (%s)",
            tool,
            provider,
            "degraded" if degraded else "recovered",
            reason,
        )
        if degraded:
            self._drop_preferred_of(key)
        self._publish_degraded(key, "degraded" if degraded else "recovered", reason)
        if self.on_gray_change is not None:
            self.on_gray_change(key, degraded, reason)

    def _drop_preferred_of(self, key: Key) -> None:
        if self.selector.preferred(key[1]) == key[0]:
            self.selector.on_refusal(key[1], key[0], asyncio.get_running_loop().time(), 0.0)

    def quorum_changed(self, keys: Collection[Key]) -> None:
        """The (provider, tool)s a quorum of callers now holds degraded (the exchange)."""
        for provider, tool in self.gray.set_quorum(keys):
            held = (provider, tool) in self.gray.quorum
            self._count("gray_quorum" if held else "gray_quorum_lost")
            if held:
                self._drop_preferred_of((provider, tool))
            self._publish_degraded(
                (provider, tool),
                "quorum" if held else "quorum_lost",
                "a quorum of callers observed it degraded" if held else "",
            )

    def _publish_degraded(self, key: Key, state: str, reason: str) -> None:
        """A `degraded` event (an append to the stream's buffers: never blocks)."""
        if self._events is not None:
            self._events.publish(
                ProviderDegraded(
                    ts=time.time(),
                    provider=key[0],
                    tool=key[1],
                    state=state,
                    reason=reason[:MAX_EVENT_REASON_CHARS],
                )
            )

    async def _ask_probe(self, provider: str, tool: str) -> ProbeAnswer:
        """Ask `provider` to run its own probe of `tool` (`vsm.probe`)."""
        objective = self.gray.objective_s(tool)
        ctx = CallContext(
            caller_id=self._node_id, caller_zone=self._zones.zones[-1], origin="gray-probe"
        ).with_timeout(objective + ACCEPT_TIMEOUT_S)
        if self._state(provider) not in USABLE_STATES:
            return "failed"
        try:
            result = await self._attempt(
                provider,
                PROBE_TOOL,
                {"tool": tool, "timeout_s": objective},
                ctx,
                ctx.remaining_s() or objective,
                attempt=1,
                selector=self._probe_selector,
            )
        except (ToolError, _Retry) as e:
            answer = refused_probe_answer(e.reason)
            log.info("probe of %s on %s: %s (%s)", tool, provider, answer, e)
            return answer
        return _probe_answer(result)

    async def _probe(self, key: Key) -> None:
        """One recovery probe of a degraded (provider, tool)."""
        try:
            answer = await self._ask_probe(*key)
        finally:
            self._probing.discard(key)
        if self.gray.probe_result(key, answer, asyncio.get_running_loop().time()):
            self._gray_changed(key, degraded=False, reason=f"probe {answer}")

    async def audit_peer(self, rng: random.Random) -> dict[str, Any] | None:
        """System 3*'s sample of a peer's tool: one random (provider, tool) of the mesh
        probed through its `vsm.probe`; a failed probe counts as a bad call (gray
        failures). None when no peer offers a tool."""
        keys = sorted(
            (remote.tool.provider, name)
            for name, entries in self._remote.items()
            if not name.startswith("vsm.")
            for remote in entries
            if self._state(remote.tool.provider) in USABLE_STATES
        )
        if not keys:
            return None
        provider, tool = rng.choice(keys)
        answer = await self._ask_probe(provider, tool)
        if answer in ("ok", "failed"):  # no_probe, skipped: no verdict on the tool
            now = asyncio.get_running_loop().time()
            bad = answer == "failed"
            if self.gray.record(provider, tool, bad=bad, reason="S3* probe failed", now=now):
                self._gray_changed(
                    (provider, tool), degraded=True, reason="S3* probe of a peer's tool failed"
                )
        return {"provider": provider, "tool": tool, "ok": answer != "failed", "answer": answer}

    async def _flush_progress(self, pending: _Pending, result: ToolResult) -> None:
        """Deliver the provider's progress before its result (they travel apart)."""
        if pending.progress is None or pending.expected <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PROGRESS_FLUSH_S):
                while pending.arrived < pending.expected:
                    pending.arrival.clear()
                    await pending.arrival.wait()
                if pending.queue is not None:
                    await pending.queue.join()

    def _client_of(self, call_id: int) -> RelayedCall | None:
        pending = self._pending.get(call_id)
        return None if pending is None else pending.relayed

    def _on_progress(self, peer: Peer, envelope: Envelope) -> None:
        try:
            message = decode_progress(envelope.payload)
        except InvokeCodecError:
            self._count("progress_malformed")
            return
        pending = self._pending.get(message.call_id)
        if pending is None or pending.provider != peer.node_id:
            self._count("progress_late")
            return
        pending.accept()
        if message.ack:
            return
        pending.arrived += 1
        pending.arrival.set()
        # Progress is a sign of life: the objective counts from the last one.
        pending.started = asyncio.get_running_loop().time()
        if pending.progress is None:
            return
        if pending.queue is None:
            pending.queue = asyncio.Queue(MAX_PROGRESS_QUEUE)
            pending.forwarder = self._spawn(
                self._forward_progress(pending), f"routing-progress-{pending.call_id}"
            )
        try:
            pending.queue.put_nowait(message)
        except asyncio.QueueFull:
            self._count("progress_dropped")

    async def _forward_progress(self, pending: _Pending) -> None:
        queue, progress = pending.queue, pending.progress
        assert queue is not None and progress is not None
        while True:
            message = await queue.get()
            try:
                await progress(message.progress, message.total, message.message)
            except (ConnectionError, NodeError) as e:
                self._count("progress_failed")
                log.debug("progress for call %d not delivered: %s", pending.call_id, e)
            finally:
                queue.task_done()

    # -- serving (provider node) -----------------------------------------------------------

    async def _serve(self, peer: Peer, envelope: Envelope) -> tuple[MsgType, bytes]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            request = decode_request(envelope.payload)
        except InvokeCodecError as e:
            self._count("invoke_malformed")
            return MsgType.ERROR, encode(InvokeError(reason="malformed", message=str(e)))
        zone = effective_zone(self._zones, request.caller_zone, peer.certificate.zone)
        sent = 0
        entry = peer.node_id
        call_id = request.call_id

        async def progress(value: float, total: float | None, message: str | None) -> None:
            nonlocal sent
            sent += 1
            report = CallProgress(call_id=call_id, progress=value, total=total, message=message)
            self._mesh.send(entry, MsgType.PROGRESS, encode(report), priority=Priority.REQUEST)

        deadline = started + request.timeout_ms / 1000 if request.timeout_ms else None
        ctx = CallContext(
            caller_id=request.caller_id,
            caller_zone=zone,
            origin=f"mesh:{entry}",
            entry_origin=request.origin,
            trace_id=request.trace_id,
            causality=request.causality,
            progress=progress if request.progress else None,
            deadline=deadline,
            client=self.client_relay.channel(self._mesh, entry, request, deadline),
            # The entry node's word (it capped the caller's class); unknown: `normal`.
            priority=_served_priority(request.priority),
        )
        ack = loop.call_later(ACK_AFTER_S, self._send_ack, entry, call_id)
        outcome = "ok"
        reason: str | None = None
        unaudited = False  # a refusal for load (as at the entry)
        try:
            if self.gate is not None:
                self.gate(ctx, entry, request.tool)
            result = await self._admitted(
                self.serve_limit,
                request.tool,
                ctx,
                self.local.call_any(request.tool, request.arguments, ctx),
            )
            if result.get("isError"):
                outcome = "error_result"
            if sent:
                meta = result.get("_meta")
                result = {**result, "_meta": {**(meta or {}), META_PROGRESS_SENT: sent}}
            answer = MsgType.RESULT, encode(result)
        except ToolError as e:
            outcome = e.reason
            reason = _reason_text(e)
            unaudited = isinstance(e, ConcurrencyLimited)
            answer = MsgType.ERROR, encode(error_from_tool_error(e))
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            ack.cancel()
            latency_ms = round((loop.time() - started) * 1000, 3)
            self._publish_call(request.tool, self._node_id, ctx, latency_ms, outcome, reason)
            data = {
                "tool": request.tool,
                "entry": entry,
                "caller": request.caller_id,
                "origin": request.origin,
                "zone": zone,
                "claimed_zone": request.caller_zone,
                "trace_id": request.trace_id,
                "causality": list(request.causality),
                "outcome": outcome,
                "latency_ms": latency_ms,
                "priority": ctx.priority,
                "attempt": request.attempt,
            }
            if unaudited:
                self._count("refused_for_load")
            elif outcome == "cancelled":
                self._spawn(self._append_audit("tool.serve", entry, data), "audit-serve")
            else:
                await self._append_audit("tool.serve", entry, data)
        if len(answer[1]) > self._mesh.max_payload_bytes:
            # Not a failure to retry elsewhere: the tool ran; its answer cannot travel.
            error = InvokeError(
                reason=ProviderError.reason,
                message=f"answer of {len(answer[1])} bytes does not fit in an envelope",
            )
            return MsgType.ERROR, encode(error)
        return answer

    def _send_ack(self, node_id: str, call_id: int) -> None:
        self._mesh.send(
            node_id,
            MsgType.PROGRESS,
            encode(CallProgress(call_id=call_id, ack=True)),
            priority=Priority.REQUEST,
        )

    async def _append_audit(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        try:
            await self._audit.append(kind, actor, data, durable=self._commit_before_answer)
        except NodeError as e:
            self._count("audit_failed")
            log.warning("audit %s not recorded: %s", kind, e)


def _served_priority(claimed: str) -> CallPriority:
    try:
        return parse_priority(claimed)
    except PriorityError:
        return DEFAULT_PRIORITY


def effective_zone(zones: ZoneOrder, claimed: str, certificate_zone: str) -> str:
    """The lower of the zone an entry node claims for its caller and the entry node's
    own certificate zone: a node cannot grant more than it holds. An unknown zone is
    kept as it is (and is denied everything)."""
    if claimed not in zones:
        return claimed
    if certificate_zone not in zones:
        return certificate_zone
    return claimed if zones.allows(certificate_zone, claimed) else certificate_zone


def _probe_answer(result: ToolResult) -> ProbeAnswer:
    """`vsm.probe`'s answer: `{"ok": true|false|null}` as JSON text (null: no probe)."""
    if result.get("isError"):
        return "failed"
    content = result.get("content") or []
    text = content[0].get("text", "") if content and isinstance(content[0], dict) else ""
    try:
        ok = json.loads(text).get("ok")
    except (ValueError, AttributeError):
        return "failed"
    return "no_probe" if ok is None else "ok" if ok is True else "failed"


def _reason_text(error: ToolError) -> str:
    """An error's message for an event, capped (tool messages can be long)."""
    return str(error)[:MAX_EVENT_REASON_CHARS]


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
