"""System 4's environment scan: what changed around the node, as adaptation proposals.

Every `scan_interval_s` it compares what it reads now with what it read before: peers
and tools that appeared or left, tools with one provider left, peers suspect (or a
bridge down) for `degraded_after_s`, System 3's error ratio and p95 latency over their
objectives. Each proposal is an `s4_proposal` event and is kept (the newest
`max_proposals`) for `/api/vsm`; its note explains it in words: a template, replaced in
the view by the language model's words when `[llm]` has a key.

What it reads comes in as callables (`ScanInputs`), so it imports no routing or mesh.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.tools.offers import is_offers_tool
from vsmcp.node.vsm.events import AdaptationProposed, EventSink
from vsmcp.node.vsm.s4.config import S4Config

GONE_STATES = frozenset({"dead", "left"})
# Proposals the language model explains per scan, at most (the rest keep their template).
MAX_EXPLAINED_PER_SCAN = 3

# A template note → the model's words, or None (`Planner.explain`).
Explainer = Callable[[str], Awaitable["str | None"]]
DEGRADED_STATES = frozenset({"suspect"})


@dataclass(frozen=True, slots=True)
class ScanInputs:
    peers: Callable[[], Mapping[str, str]]  # node id → membership state
    tools: Callable[[], Mapping[str, frozenset[str]]]  # tool → provider node ids
    kpis: Callable[[], tuple[float, float | None]]  # error ratio, p95 latency ms
    latency_objective_ms: float
    bridges: Callable[[], Mapping[str, str]]  # bridge → state


TEMPLATES = {
    "tool_appeared": "tool {subject} appeared on the mesh",
    "tool_gone": "tool {subject} is no longer offered anywhere: callers of it now fail",
    "single_provider": (
        "tool {subject} has one provider left ({detail}): start another provider or "
        "mount it on a second node before that one fails"
    ),
    "peer_joined": "node {subject} joined the mesh",
    "peer_gone": "node {subject} left the mesh ({detail}); its tools move to other providers",
    "peer_degraded": ("node {subject} has been {detail}: consider draining it or moving its tools"),
    "bridge_down": "bridge {subject} has been {detail}: check its broker or credentials",
    "error_trend": (
        "{detail} of calls failed over System 3's window: look at the failing units; "
        "System 5 may tighten limits"
    ),
    "latency_trend": (
        "p95 latency {detail} is over the objective: add capacity or shed low-priority work"
    ),
}


class EnvironmentScan:
    def __init__(
        self,
        inputs: ScanInputs,
        config: S4Config,
        events: EventSink,
        loops: LoopSupervisor,
        clock: Callable[[], float] = time.time,
        explainer: Explainer | None = None,
    ) -> None:
        self._inputs = inputs
        self._explainer = explainer
        self._unexplained: deque[dict[str, Any]] = deque(maxlen=config.max_proposals)
        self._config = config
        self._events = events
        self._loops = loops
        self._clock = clock
        self._peers: dict[str, str] | None = None
        self._tools: dict[str, frozenset[str]] | None = None
        # When each peer / bridge entered its bad state, and whether it was proposed.
        self._bad_since: dict[str, float] = {}
        self._raised: set[str] = set()
        self.proposals: deque[dict[str, Any]] = deque(maxlen=config.max_proposals)
        self.scans = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = self._loops.spawn("s4-scan", self._run)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> EnvironmentScan:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        while True:
            self.scan()
            await self.explain_pending()
            await asyncio.sleep(self._config.scan_interval_s)

    async def explain_pending(self) -> None:
        """Have the language model explain new proposals (when one is configured): the
        note is replaced in the view (`note_by`: `llm`); the event kept the template."""
        if self._explainer is None:
            self._unexplained.clear()
            return
        for _ in range(min(MAX_EXPLAINED_PER_SCAN, len(self._unexplained))):
            proposal = self._unexplained.popleft()
            said = await self._explainer(proposal["note"])
            if said:
                proposal["note"], proposal["note_by"] = said, "llm"
        self._unexplained.clear()

    def view(self) -> dict[str, Any]:
        return {"scans": self.scans, "proposals": list(self.proposals)}

    def _propose(self, proposal: str, subject: str, detail: str = "") -> None:
        note = TEMPLATES[proposal].format(subject=subject, detail=detail)
        now = self._clock()
        entry = {"ts": now, "proposal": proposal, "subject": subject, "note": note}
        entry["note_by"] = "template"
        self.proposals.append(entry)
        self._unexplained.append(entry)
        self._events.publish(
            AdaptationProposed(ts=now, proposal=proposal, subject=subject, note=note)
        )

    def _once(self, key: str, active: bool, proposal: str, subject: str, detail: str = "") -> None:
        """Propose when `active` becomes true; again only after it was false."""
        if not active:
            self._raised.discard(key)
        elif key not in self._raised:
            self._raised.add(key)
            self._propose(proposal, subject, detail)

    def scan(self) -> None:
        """One comparison (the loop's body; tests call it directly)."""
        self.scans += 1
        now = self._clock()
        peers = dict(self._inputs.peers())
        # The `vsm.mcp.*` carriers of resources and prompts are plumbing, not tools: no
        # proposal is about them (docs/mcp-resources.md).
        tools = {k: frozenset(v) for k, v in self._inputs.tools().items() if not is_offers_tool(k)}
        bridges = dict(self._inputs.bridges())
        self._scan_peers(peers, now)
        self._scan_tools(tools)
        self._scan_bridges(bridges, now)
        # What is no longer there (reaped peers, tools gone) is forgotten: the state stays
        # as large as the mesh is now, whatever its churn.
        current = {
            *(f"peer:{n}" for n in peers),
            *(f"single:{t}" for t in tools),
            *(f"bridge:{b}" for b in bridges),
            "kpi:errors",
            "kpi:latency",
        }
        self._raised &= current
        for key in self._bad_since.keys() - current:
            del self._bad_since[key]
        errors, p95 = self._inputs.kpis()
        self._once(
            "kpi:errors", errors > self._config.error_ratio, "error_trend", "calls", f"{errors:.0%}"
        )
        objective = self._inputs.latency_objective_ms
        slow = p95 is not None and p95 > objective
        self._once(
            "kpi:latency", slow, "latency_trend", "calls", f"{p95 or 0:.0f} ms > {objective:.0f} ms"
        )

    def _lasting(self, key: str, bad: bool, now: float) -> float:
        """How long `key` has been bad (0 when it is not)."""
        if not bad:
            self._bad_since.pop(key, None)
            return 0.0
        return now - self._bad_since.setdefault(key, now)

    def _scan_peers(self, peers: dict[str, str], now: float) -> None:
        before = self._peers
        self._peers = peers
        if before is not None:
            for node, state in peers.items():
                was = before.get(node)
                if state in GONE_STATES and was is not None and was not in GONE_STATES:
                    self._propose("peer_gone", node, state)
                elif state not in GONE_STATES and (was is None or was in GONE_STATES):
                    self._propose("peer_joined", node)
        for node, state in peers.items():
            lasted = self._lasting(f"peer:{node}", state in DEGRADED_STATES, now)
            degraded = lasted >= self._config.degraded_after_s
            self._once(
                f"peer:{node}", degraded, "peer_degraded", node, f"{state} for {lasted:.0f} s"
            )

    def _scan_tools(self, tools: dict[str, frozenset[str]]) -> None:
        before = self._tools
        self._tools = tools
        if before is not None:
            for name in sorted(tools.keys() - before.keys()):
                self._propose("tool_appeared", name)
            for name in sorted(before.keys() - tools.keys()):
                self._propose("tool_gone", name)
        for name, providers in sorted(tools.items()):
            only = next(iter(providers)) if len(providers) == 1 else ""
            # Only a tool that had more than one provider: on a lone node every tool has
            # one, which is no news.
            had_more = before is not None and len(before.get(name, ())) > 1
            self._once(
                f"single:{name}", len(providers) == 1 and had_more, "single_provider", name, only
            )

    def _scan_bridges(self, bridges: dict[str, str], now: float) -> None:
        for name, state in bridges.items():
            lasted = self._lasting(f"bridge:{name}", state == "down", now)
            down = lasted >= self._config.degraded_after_s
            self._once(f"bridge:{name}", down, "bridge_down", name, f"down for {lasted:.0f} s")
