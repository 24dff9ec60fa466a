"""Gray failures caught by callers: what this entry node saw of each provider's tools.

Membership says whether a node answers heartbeats; it cannot see a node whose process is
alive while its tools hang (a wedged plugin, a mount stuck on a lock). The callers can:
every remote call's outcome is recorded here per (provider, tool). A call counts as
*bad* when it is still running past the tool's latency objective (the watch loop
records it then, without waiting for the timeout), or ends in a timeout or a provider
failure; a refusal before the tool ran (overloaded, rate limited) is not a gray failure
and is not recorded. A success is good however slow, when within the objective: a slow
but healthy provider is never degraded.

A (provider, tool) is degraded here once its last `min_bad` calls were all bad (a hang:
every call in flight passes the objective at about the same time), or once, within
`window_s`, at least `min_bad` calls were bad and they were at least `bad_ratio` of the
calls (intermittent failures). Degraded, it is routed around
(tried only when every provider of the tool is degraded) and probed every
`probe_interval_s` through the provider's `vsm.probe` tool (its S3* probe of that tool,
`node/vsm/audits.py`); `recover_probes` good probes in a row bring it back. A provider
that declares no probe for the tool (or has no `vsm.probe`) gets real traffic again
after `hold_s`; a probe the provider refuses for load (overloaded, rate limited) is
skipped: no verdict either way.

The mesh-wide view (a quorum of callers agreeing, `gray_exchange.py`) is set from
outside with `set_quorum`; a quorum-degraded tool is routed around at every node.

Pure: time is passed in, nothing here does I/O. Bounded: `MAX_OUTCOMES` per key and
`MAX_KEYS` keys (the least recently used is forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from vsmcp.node.routing.gray_config import GrayConfig

MAX_OUTCOMES: Final = 64
MAX_KEYS: Final = 4096
MAX_REASON_CHARS: Final = 200

Key = tuple[str, str]
"""(provider node id, tool name)"""

Change = Literal["degraded", "recovered"]
ProbeAnswer = Literal["ok", "failed", "no_probe", "skipped"]
# A provider's refusal of `vsm.probe` (by its error reason) that is no verdict on the
# tool: it has no `vsm.probe` (an older node: treated as declaring no probe, so `hold_s`
# releases it), or it is too busy to probe now (skipped: changes nothing).
PROBE_REFUSALS: Final[dict[str, ProbeAnswer]] = {
    "unknown_tool": "no_probe",
    "overloaded": "skipped",
    "shed": "skipped",
    "rate_limited": "skipped",
    "busy": "skipped",
}


def refused_probe_answer(reason: str) -> ProbeAnswer:
    """The answer a `vsm.probe` call that ended in an error with `reason` stands for."""
    return PROBE_REFUSALS.get(reason, "failed")


@dataclass(slots=True)
class _Degraded:
    since: float
    reason: str
    next_probe: float
    good_probes: int = 0
    probes: int = 0


@dataclass(slots=True)
class _Seen:
    # (time, bad) per call, oldest first
    outcomes: deque[tuple[float, bool]] = field(default_factory=lambda: deque(maxlen=MAX_OUTCOMES))
    consecutive_bad: int = 0


class GrayTracker:
    def __init__(self, config: GrayConfig) -> None:
        self.config = config
        self._seen: OrderedDict[Key, _Seen] = OrderedDict()
        self._degraded: dict[Key, _Degraded] = {}
        self._quorum: frozenset[Key] = frozenset()
        # bad, good, degraded, recovered, probes_ok, probes_failed, probes_skipped,
        # released (no probe)
        self.stats: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def objective_s(self, tool: str) -> float:
        return self.config.objectives.get(tool, self.config.objective_s)

    # -- outcomes -------------------------------------------------------------------------

    def record(self, provider: str, tool: str, *, bad: bool, reason: str, now: float) -> bool:
        """One call's outcome; True when it made (provider, tool) degraded here."""
        if not self.config.enabled:
            return False
        key = (provider, tool)
        self._count("bad" if bad else "good")
        held = self._degraded.get(key)
        if held is not None:
            # Traffic reached it anyway (every provider degraded): a probe of sorts.
            if not bad:
                held.good_probes += 1
            return False
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Seen()
            while len(self._seen) > MAX_KEYS:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(key)
        seen.outcomes.append((now, bad))
        horizon = now - self.config.window_s
        while seen.outcomes and seen.outcomes[0][0] < horizon:
            seen.outcomes.popleft()
        if not bad:
            seen.consecutive_bad = 0
            return False
        seen.consecutive_bad += 1
        total = len(seen.outcomes)
        bad_calls = sum(1 for _, b in seen.outcomes if b)
        in_a_row = seen.consecutive_bad >= self.config.min_bad
        if not in_a_row and (
            bad_calls < self.config.min_bad or bad_calls < self.config.bad_ratio * total
        ):
            return False
        what = (
            f"{seen.consecutive_bad} calls in a row bad"
            if in_a_row
            else f"{bad_calls} of {total} calls in {self.config.window_s:g} s bad"
        )
        seen.consecutive_bad = 0
        self._degraded[key] = _Degraded(
            since=now,
            reason=f"{what}; last: {reason}"[:MAX_REASON_CHARS],
            next_probe=now + self.config.probe_interval_s,
        )
        seen.outcomes.clear()
        self._count("degraded")
        return True

    # -- routing ----------------------------------------------------------------------------

    def is_degraded(self, provider: str, tool: str) -> bool:
        if not self.config.enabled:
            return False  # off: routing ignores what other callers report too
        key = (provider, tool)
        return key in self._degraded or key in self._quorum

    def locally_degraded(self) -> dict[Key, str]:
        return {key: held.reason for key, held in self._degraded.items()}

    def set_quorum(self, keys: Collection[Key]) -> set[Key]:
        """The keys a quorum of callers holds degraded now; returns those that changed.
        Disabled, the tracker holds none (they are not routed around nor shown)."""
        new = frozenset(keys) if self.config.enabled else frozenset()
        changed = set(new ^ self._quorum)
        self._quorum = new
        return changed

    @property
    def quorum(self) -> frozenset[Key]:
        return self._quorum

    # -- probing ----------------------------------------------------------------------------

    def probes_due(self, now: float) -> list[Key]:
        """Degraded keys whose next probe is due (each is then scheduled again)."""
        due = []
        for key, held in self._degraded.items():
            if now >= held.next_probe:
                held.next_probe = now + self.config.probe_interval_s
                due.append(key)
        return due

    def probe_result(self, key: Key, answer: ProbeAnswer, now: float) -> bool:
        """A probe's answer; True when it brought `key` back."""
        held = self._degraded.get(key)
        if held is None:
            return False
        if answer == "skipped":
            self._count("probes_skipped")
            return False
        held.probes += 1
        if answer == "ok":
            self._count("probes_ok")
            held.good_probes += 1
        elif answer == "failed":
            self._count("probes_failed")
            held.good_probes = 0
        elif now - held.since >= self.config.hold_s:
            self._count("released")
            held.good_probes = self.config.recover_probes
        if held.good_probes < self.config.recover_probes:
            return False
        del self._degraded[key]
        self._count("recovered")
        return True

    def retain(self, providers: Collection[str]) -> list[Key]:
        """Forget providers gone from the registry; returns degraded keys dropped."""
        dropped = [key for key in self._degraded if key[0] not in providers]
        for key in dropped:
            del self._degraded[key]
        for key in [k for k in self._seen if k[0] not in providers]:
            del self._seen[key]
        return dropped

    def provider_view(self, provider: str) -> dict[str, Any]:
        """One provider's tools as this caller sees them, for `/api/peers`: the degraded
        ones, and `degraded` when every tool of it this caller has used is (the whole
        node fails its callers while membership may still say alive)."""
        held = sorted(t for p, t in set(self._degraded) | self._quorum if p == provider)
        used = {t for p, t in self._seen if p == provider} | set(held)
        return {"degraded": bool(used) and used <= set(held), "degraded_tools": held}

    def view(self) -> list[dict[str, Any]]:
        """Degraded (provider, tool)s, locally or by quorum, for `/api/vsm`."""
        out = []
        for provider, tool in sorted(set(self._degraded) | self._quorum):
            held = self._degraded.get((provider, tool))
            out.append(
                {
                    "provider": provider,
                    "tool": tool,
                    "local": held is not None,
                    "quorum": (provider, tool) in self._quorum,
                    "reason": held.reason if held is not None else "a quorum of callers",
                    "probes": held.probes if held is not None else 0,
                }
            )
        return out
