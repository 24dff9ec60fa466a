"""System 5's receiver of the algedonic channel: strong signals, answered by rules.

One owned loop (`algedonic-s5`) drains the S5 lane as soon as a signal lands there —
it never waits behind S3's lane, which has its own consumer — and runs every matching
rule (`node/vsm/responses.py`). A response that lasts (tightened limits, shedding, a
quarantine) is kept as active with its end time; the same loop wakes at the earliest
end and restores what the response changed. Each response, and each end of one, is a
`s5_response` event and an audit entry (`vsm.response`).

What the responses act on is behind `Effectors` (the node's limits, entry shedder and
supervisor); blocks go to `mitigator`, the immune system, when the node has one — until
then a `block_origin` response is recorded as `unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.errors import NodeError
from vsmcp.node.vsm.algedonic import Lane, Signal
from vsmcp.node.vsm.balance import AlgedonicBalance
from vsmcp.node.vsm.events import EventSink, ResponseTaken
from vsmcp.node.vsm.loop_service import LoopService
from vsmcp.node.vsm.mitigation import MitigationRequest, Mitigator
from vsmcp.node.vsm.priority import priority_rank
from vsmcp.node.vsm.responses import ResponseRule

log = logging.getLogger(__name__)

LOOP_NAME = "algedonic-s5"
MAX_RECENT_SIGNALS = 50
AUDIT_KIND = "vsm.response"

AuditSink = Callable[[str, dict[str, Any]], None]
"""`record(kind, data)`: write an audit entry without waiting (the node's writer)."""


class Effectors(Protocol):
    """What System 5's responses change on the node."""

    def scale_limits(self, factor: float) -> None:
        """Scale rate limits and unit concurrency by `factor` (1.0: as configured)."""

    def shed(self, priority: str | None) -> None:
        """Shed calls of `priority` or lower at the entry (None: shed nothing)."""

    def quarantine_unit(self, unit: str, seconds: float, reason: str) -> bool:
        """Quarantine an S1 unit; False if there is no such unit."""


@dataclass(slots=True)
class ActiveResponse:
    rule: ResponseRule
    target: str | None
    signal_seq: int
    until_wall: float
    until_mono: float

    def view(self, now_mono: float) -> dict[str, Any]:
        return {
            "rule": self.rule.name,
            "action": self.rule.do,
            "target": self.target,
            "signal_seq": self.signal_seq,
            "until": round(self.until_wall, 3),
            "remaining_s": round(max(0.0, self.until_mono - now_mono), 3),
        }


class System5(LoopService):
    """Consumes the S5 lane and applies `rules` through `effectors`."""

    loop_name = LOOP_NAME

    def __init__(
        self,
        lane: Lane,
        rules: Sequence[ResponseRule],
        effectors: Effectors,
        *,
        events: EventSink,
        balance: AlgedonicBalance,
        loops: LoopSupervisor,
        audit: AuditSink,
        order: Callable[[], int],
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(loops)
        self._lane = lane
        self.rules = tuple(rules)
        self._effectors = effectors
        self._events = events
        self._balance = balance
        self._audit = audit
        self._order = order
        self._monotonic = monotonic
        self._wall = wall
        # The immune system, when the node has one (set by the node).
        self.mitigator: Mitigator | None = None
        self.active: list[ActiveResponse] = []
        self.recent: deque[dict[str, Any]] = deque(maxlen=MAX_RECENT_SIGNALS)
        self.outcomes: Counter[str] = Counter()
        self.handled = 0

    # -- handling ----------------------------------------------------------------------

    def handle(self, signal: Signal) -> None:
        """Answer one signal with every rule that matches it."""
        self.handled += 1
        self._balance.add((signal,))
        answered = []
        for rule in self.rules:
            if rule.matches(signal):
                self._respond(rule, signal)
                answered.append(rule.name)
        self.recent.append({**signal.view(), "order": self._order(), "rules": answered})

    def _respond(self, rule: ResponseRule, signal: Signal) -> None:
        if rule.do == "alert":
            log.warning(
                "algedonic alert (rule %s): %s %.2f from %s: %s",
                rule.name,
                signal.valence,
                signal.intensity,
                signal.source,
                signal.reason,
            )
            self._publish(rule, "logged", None, None, signal.seq)
            return
        target = (
            (rule.target or signal.source)
            if rule.do in ("quarantine_unit", "block_origin")
            else None
        )
        outcome = self._act(rule, target, signal)
        until = None
        if outcome == "applied":
            until = self._activate(rule, target, signal).until_wall
        self._publish(rule, outcome, target, until, signal.seq)

    def _act(self, rule: ResponseRule, target: str | None, signal: Signal) -> str:
        if rule.do == "quarantine_unit":
            assert target is not None
            reason = f"algedonic rule {rule.name}: {signal.reason or signal.valence}"
            ok = self._effectors.quarantine_unit(target, rule.seconds, reason)
            return "applied" if ok else "failed"
        if rule.do == "block_origin":
            return self._block(rule, target or signal.source, signal)
        return "applied"  # tighten_limit and shed take effect in `_apply_levels`

    def _block(self, rule: ResponseRule, target: str, signal: Signal) -> str:
        if self.mitigator is None:
            return "unavailable"
        request = MitigationRequest(
            target_kind="origin",
            target=target,
            ttl_s=rule.seconds,
            source=f"s5:{rule.name}",
            reason=signal.reason or f"algedonic {signal.valence}",
            evidence=(
                f"signal #{signal.seq}: {signal.valence} {signal.intensity} from {signal.source}"
            ),
        )
        try:
            return self.mitigator.mitigate(request).status
        except NodeError as e:
            log.warning("rule %s: the immune system refused to block %s: %s", rule.name, target, e)
            return "failed"

    def _activate(self, rule: ResponseRule, target: str | None, signal: Signal) -> ActiveResponse:
        """Start (or extend: the same rule and target answer again) a lasting response."""
        now_mono, now_wall = self._monotonic(), self._wall()
        response = ActiveResponse(
            rule, target, signal.seq, now_wall + rule.seconds, now_mono + rule.seconds
        )
        self.active = [a for a in self.active if (a.rule.name, a.target) != (rule.name, target)]
        self.active.append(response)
        self._apply_levels()
        return response

    def expire(self) -> None:
        """End the responses whose time is up, restoring what they changed."""
        now = self._monotonic()
        ended = [a for a in self.active if a.until_mono <= now]
        if not ended:
            return
        self.active = [a for a in self.active if a.until_mono > now]
        self._apply_levels()
        for response in ended:
            self._publish(response.rule, "restored", response.target, None, response.signal_seq)

    def _apply_levels(self) -> None:
        """The tightest active scale and the widest active shedding win."""
        factors = [a.rule.scale for a in self.active if a.rule.do == "tighten_limit"]
        self._effectors.scale_limits(min(factors, default=1.0))
        levels = [a.rule.shed_priority for a in self.active if a.rule.do == "shed"]
        self._effectors.shed(max(levels, key=priority_rank) if levels else None)

    def _publish(
        self,
        rule: ResponseRule,
        outcome: str,
        target: str | None,
        until: float | None,
        signal_seq: int,
    ) -> None:
        self.outcomes[outcome] += 1
        self._events.publish(
            ResponseTaken(
                ts=self._wall(),
                rule=rule.name,
                action=rule.do,
                outcome=outcome,
                target=target,
                until=until,
            )
        )
        self._audit(
            AUDIT_KIND,
            {
                "rule": rule.name,
                "action": rule.do,
                "outcome": outcome,
                "target": target,
                "until": until,
                "signal_seq": signal_seq,
            },
        )

    # -- the loop ----------------------------------------------------------------------

    def _next_wait_s(self) -> float | None:
        if not self.active:
            return None
        return max(0.0, min(a.until_mono for a in self.active) - self._monotonic())

    async def _run(self) -> None:
        lane = self._lane
        while True:
            if not len(lane):
                wait = self._next_wait_s()
                try:
                    async with asyncio.timeout(wait):
                        await lane.wake.wait()
                except TimeoutError:
                    pass
            for signal in lane.take_all():
                self.handle(signal)
            self.expire()

    # -- view --------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        now = self._monotonic()
        return {
            "rules": [_rule_view(r) for r in self.rules],
            "active": [a.view(now) for a in self.active],
            "recent_signals": list(self.recent),
            "handled": self.handled,
            "queued": len(self._lane),
            "outcomes": dict(self.outcomes),
            "immune_system": self.mitigator is not None,
        }


def _rule_view(rule: ResponseRule) -> dict[str, Any]:
    view: dict[str, Any] = {
        "name": rule.name,
        "do": rule.do,
        "when": rule.when,
        "valence": rule.valence,
        "source": rule.source,
    }
    if rule.do == "tighten_limit":
        view["factor"] = rule.scale
    if rule.do == "shed":
        view["priority"] = rule.shed_priority
    if rule.target is not None:
        view["target"] = rule.target
    if rule.do != "alert":
        view["duration_s"] = rule.seconds
    return view
