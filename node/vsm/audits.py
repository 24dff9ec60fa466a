"""System 3*: sporadic, randomly timed audits of the S1 units, bypassing System 2.

A tool may declare a probe (`probe = { arguments = {...}, expect = {...} }` in its
config; a WASM tool: `[probe]` in its manifest): a call with fixed arguments whose
result must match `expect`, a JSON schema (checked against the result's
`structuredContent`, else its text parsed as JSON, else the text). At random times
(uniform in [`min_interval_s`, `max_interval_s`]) the
auditor picks one probed local tool at random and calls its unit directly — not through
the catalog's limits, routing or breaker — at `critical` priority (past the unit's
adaptive limit) with `timeout_s`. A probe that errs, times out or returns the wrong shape
failed; `failures_to_quarantine` failures of a tool in a row quarantine its unit
(`quarantine_s`), raise pain and write an `s3.audit` audit entry; every audit is an
`audit` event. A busy unit is no verdict: when no slot is free the probe is skipped (it
never queues, so `timeout_s` times the tool alone), as when the unit refuses it for load
(overloaded, rate limited, the tool quarantined) — a surge must not turn shedding into
quarantines. Each round also
probes `peer_sample` of the peers' tools through their `vsm.probe` (`peer_audit`, set
by the node; a failure there counts as a bad call in the gray-failure tracker).

`vsm.probe` (a built-in tool) runs this node's probe of one of its tools on a peer's
request (the gray-failure recovery check): it answers `{"ok": true|false|null}` (null:
the tool declares no probe) or the unit's load refusal when the probe was skipped, is
rate-limited (`max_probes_per_minute`), and concurrent
requests for one tool share one probe run. It never quarantines: only the sporadic
audits do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Final

from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.tools.config import ProbeConfig
from vsmcp.node.tools.errors import (
    InvalidArguments,
    Overloaded,
    RateLimited,
    ShuttingDown,
    ToolError,
    ToolQuarantined,
    ToolTimeout,
)
from vsmcp.node.tools.model import CallContext, DeclaresProbe, ToolResult, text_result
from vsmcp.node.tools.supervisor import Supervisor, Unit, UnitState
from vsmcp.node.vsm.audits_config import AuditsConfig
from vsmcp.node.vsm.events import AuditFinished, EventSink
from vsmcp.node.vsm.loop_service import LoopService
from vsmcp.node.vsm.priority import CRITICAL

log = logging.getLogger(__name__)

AUDIT_KIND: Final = "s3.audit"
PAIN_SOURCE: Final = "s3*"
MAX_DETAIL_CHARS: Final = 300
# A busy unit's answer to vsm.probe: when a peer may ask again (a slot frees quickly;
# the peer's own probe interval paces it anyway).
BUSY_RETRY_AFTER_S: Final = 1.0
# A unit's refusals for load: the probe did not run, so they say nothing of the tool.
LOAD_REFUSALS: Final = (Overloaded, RateLimited, ToolQuarantined)
# A unit's timeout this close to the probe's deadline is that deadline (asyncio may run a
# timer up to its clock's resolution early).
DEADLINE_SLACK_S: Final = 0.001

AuditSink = Callable[[str, dict[str, Any]], None]
PainSink = Callable[[str, float, str], None]
PeerAudit = Callable[[random.Random], Awaitable[dict[str, Any] | None]]


class ProbeSkipped(Exception):
    """The probe did not run (the unit is busy): no verdict. `refusal` is what
    `vsm.probe` answers the peer that asked."""

    def __init__(self, refusal: ToolError) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


def result_payload(result: ToolResult) -> Any:
    """What `expect` is checked against: structuredContent, else the JSON text, else text."""
    structured = result.get("structuredContent")
    if structured is not None:
        return structured
    content = result.get("content") or []
    text = content[0].get("text", "") if content and isinstance(content[0], dict) else ""
    try:
        return json.loads(text)
    except ValueError:
        return text


def shape_error(result: ToolResult, expect: Mapping[str, Any]) -> str | None:
    """Why `result` does not have the expected shape (None: it does)."""
    if result.get("isError"):
        return "the probe's result is an error"
    if not expect:
        return None
    import jsonschema  # imported at the first audit, not with the node

    validator = jsonschema.validators.validator_for(expect)(expect)
    error = jsonschema.exceptions.best_match(validator.iter_errors(result_payload(result)))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "the result"
    return f"{where}: {error.message}"[:MAX_DETAIL_CHARS]


def check_probe_schema(expect: Mapping[str, Any]) -> str | None:
    """Why `expect` is not a valid JSON schema (None: it is); for the config loader."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(expect).check_schema(dict(expect))
    except jsonschema.SchemaError as e:
        return e.message[:MAX_DETAIL_CHARS]
    return None


class Auditor(LoopService):
    """The audit loop runs while the service does (the node starts it when enabled)."""

    loop_name = "s3-audits"

    def __init__(
        self,
        config: AuditsConfig,
        loops: LoopSupervisor,
        *,
        zone: str,
        events: EventSink | None = None,
        audit: AuditSink | None = None,
        pain: PainSink | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(loops)
        self.config = config
        self._zone = zone
        self._events = events
        self._audit = audit
        self._pain = pain
        self._rng = rng or random.Random()
        self._supervisor: Supervisor | None = None
        self._configured: dict[str, ProbeConfig] = {}
        self.listed: frozenset[str] = frozenset()
        self.peer_audit: PeerAudit | None = None
        self._running: dict[str, asyncio.Future[str | None]] = {}
        self._answered: deque[float] = deque()
        # tool -> its failed audits in a row (a pass resets it)
        self._failures: dict[str, int] = {}
        # tool -> the last audit of it: {"ok", "detail", "at"}
        self.last: dict[str, dict[str, Any]] = {}
        self.peer_last: dict[str, Any] | None = None
        # rounds, passed, failed, skipped, quarantined, probe_requests, probe_refused, peer_*
        self.stats: dict[str, int] = {}

    def bind(
        self,
        supervisor: Supervisor,
        probes: Mapping[str, ProbeConfig],
        listed: Collection[str] = (),
    ) -> None:
        """`probes`: tool -> its probe; `listed`: units (mounts) audited by their tool
        list alone (the mount's health check runs tools/list; a mount listing no tool
        fails)."""
        self._supervisor = supervisor
        self._configured = dict(probes)
        self.listed = frozenset(listed)

    @property
    def probes(self) -> dict[str, ProbeConfig]:
        """tool -> its probe: those of the config, and those units declare themselves
        (a WASM tool's manifest `[probe]`; read each time: published modules come and
        go)."""
        probes = dict(self._configured)
        units = () if self._supervisor is None else self._supervisor.units.values()
        for unit in units:
            provider = unit.provider
            declared = provider.declared_probe if isinstance(provider, DeclaresProbe) else None
            if declared is not None:
                for spec in unit.known_tools():
                    probes.setdefault(spec.name, declared)
        return probes

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _unit_of(self, tool: str) -> Unit | None:
        if self._supervisor is None:
            return None
        for unit in self._supervisor.units.values():
            if any(spec.name == tool for spec in unit.known_tools()):
                return unit
        return None

    async def _run_probe(self, tool: str, timeout_s: float) -> str | None:
        """Call the tool's probe on its unit directly; the failure (None: passed).
        `ProbeSkipped` when the unit is too busy to run it now."""
        probe = self.probes[tool]
        unit = self._unit_of(tool)
        if unit is None or unit.state is not UnitState.RUNNING:
            return "its unit is not running"
        if not unit.slot_free:
            raise ProbeSkipped(
                Overloaded(
                    unit.name, unit.effective_concurrency, unit.waiting_calls, BUSY_RETRY_AFTER_S
                )
            )
        ctx = CallContext(
            caller_id="s3*", caller_zone=self._zone, origin="s3*", priority=CRITICAL
        ).with_timeout(timeout_s)
        no_answer = f"no answer within {timeout_s:g} s"
        try:
            # A slot is free: nothing suspends before the tool runs, so this times it.
            async with asyncio.timeout(timeout_s):
                result = await unit.call(probe.tool or tool, probe.arguments, ctx)
        except TimeoutError:
            return no_answer
        except ToolTimeout as e:
            # The unit stops the call at the probe's deadline, a moment before the
            # timeout above: the same event, told the same way. (A unit timeout shorter
            # than the probe's is the tool's own, told as it is.)
            now = asyncio.get_running_loop().time()
            if ctx.deadline is not None and now >= ctx.deadline - DEADLINE_SLACK_S:
                return no_answer
            return f"{e.reason}: {e}"[:MAX_DETAIL_CHARS]
        except ShuttingDown:
            raise  # the node is stopping: says nothing about the unit
        except LOAD_REFUSALS as e:
            raise ProbeSkipped(e) from None
        except ToolError as e:
            return f"{e.reason}: {e}"[:MAX_DETAIL_CHARS]
        return shape_error(result, probe.expect)

    async def probe(self, tool: str, timeout_s: float) -> str | None:
        """One probe run of `tool`; concurrent requests share it."""
        running = self._running.get(tool)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._running[tool] = future
        try:
            failure = await self._run_probe(tool, timeout_s)
            future.set_result(failure)
            return failure
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: waiters get it, no "never retrieved" warning
            raise
        finally:
            del self._running[tool]

    # -- vsm.probe ----------------------------------------------------------------------

    async def probe_tool(self, arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        """The `vsm.probe` tool: `{"ok": true|false|null, "detail": ...}`."""
        tool = str(arguments["tool"])
        self._count("probe_requests")
        now = time.monotonic()
        while self._answered and self._answered[0] < now - 60.0:
            self._answered.popleft()
        if len(self._answered) >= self.config.max_probes_per_minute:
            self._count("probe_refused")
            raise RateLimited("vsm.probe", "per-node", 60.0 - (now - self._answered[0]))
        self._answered.append(now)
        if tool not in self.probes:
            if self._unit_of(tool) is None:
                raise InvalidArguments("vsm.probe", f"no tool {tool!r} here", "arguments.tool")
            return text_result(json.dumps({"ok": None, "detail": "no probe declared"}))
        timeout_s = min(float(arguments.get("timeout_s", self.config.timeout_s)), 60.0)
        try:
            failure = await self.probe(tool, timeout_s)
        except ProbeSkipped as e:
            raise e.refusal from None  # the peer's probe is skipped too, not failed
        return text_result(json.dumps({"ok": failure is None, "detail": failure or ""}))

    # -- the sporadic audits ------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            low = self.config.min_interval_s
            high = max(low, self.config.max_interval_s)
            await asyncio.sleep(self._rng.uniform(low, high))
            await self.audit_round()

    async def audit_round(self) -> None:
        self._count("rounds")
        # A quarantined or restarting unit is not audited again until it runs.
        probed = sorted(
            t
            for t in self.probes
            if (unit := self._unit_of(t)) is not None and unit.state is UnitState.RUNNING
        )
        units = self._supervisor.units if self._supervisor is not None else {}
        listed = sorted(
            name for name in self.listed if name in units and units[name].state is UnitState.RUNNING
        )
        choices = [*probed, *(f"unit:{name}" for name in listed)]
        if choices:
            choice = self._rng.choice(choices)
            try:
                if choice.startswith("unit:"):
                    self.audit_listing(units[choice.removeprefix("unit:")])
                else:
                    await self.audit_tool(choice)
            except ShuttingDown:
                self._count("skipped")
                return
        if self.peer_audit is not None:
            for _ in range(self.config.peer_sample):
                seen = await self.peer_audit(self._rng)
                if seen is not None:
                    self.peer_last = seen
                    self._count("peer_passed" if seen.get("ok") else "peer_failed")

    def audit_listing(self, unit: Unit) -> bool:
        """Audit a mount by its tool list (refreshed by its health check's tools/list)."""
        failure = None if unit.tools() else "its tools/list lists no tool"
        return self._verdict(unit.name, unit, failure)

    async def audit_tool(self, tool: str) -> bool | None:
        """Audit one local tool now; True when it passed, None when skipped (busy)."""
        try:
            failure = await self.probe(tool, self.config.timeout_s)
        except ProbeSkipped as e:
            log.debug("S3* audit of %s skipped: %s", tool, e)
            self._count("skipped")
            return None
        return self._verdict(tool, self._unit_of(tool), failure)

    def _verdict(self, tool: str, unit: Unit | None, failure: str | None) -> bool:
        self.last[tool] = {"ok": failure is None, "detail": failure or "", "at": time.time()}
        unit_name = unit.name if unit is not None else ""
        if self._events is not None:
            self._events.publish(
                AuditFinished(
                    ts=time.time(),
                    tool=tool,
                    unit=unit_name,
                    ok=failure is None,
                    detail=failure or "",
                )
            )
        if failure is None:
            self._failures.pop(tool, None)
            self._count("passed")
            return True
        self._count("failed")
        in_a_row = self._failures[tool] = self._failures.get(tool, 0) + 1
        reason = f"S3* audit of {tool} failed: {failure}"
        if in_a_row < self.config.failures_to_quarantine:
            log.info("%s (%d in a row)", reason, in_a_row)
            return False
        del self._failures[tool]
        log.warning("%s (%d in a row)", reason, in_a_row)
        quarantined = False
        if self._supervisor is not None and unit is not None:
            quarantined = self._supervisor.quarantine(unit.name, self.config.quarantine_s, reason)
            if quarantined:
                self._count("quarantined")
        if self._pain is not None:
            self._pain(PAIN_SOURCE, self.config.pain_intensity, reason)
        if self._audit is not None:
            self._audit(
                AUDIT_KIND,
                {
                    "tool": tool,
                    "unit": unit_name,
                    "detail": failure,
                    "quarantined": quarantined,
                    "quarantine_s": self.config.quarantine_s,
                },
            )
        return False

    def view(self) -> dict[str, Any]:
        """`/api/vsm` `s3_star`: audited tools and their last audit, unaudited units."""
        units = [] if self._supervisor is None else list(self._supervisor.units.values())
        probes = self.probes
        audited_units = {u.name for t in probes if (u := self._unit_of(t)) is not None}
        audited_units |= self.listed
        return {
            "enabled": self.config.enabled,
            "audited": {t: self.last.get(t) for t in sorted({*probes, *self.listed})},
            "unaudited": sorted(u.name for u in units if u.name not in audited_units),
            "peer_last": self.peer_last,
            "stats": dict(self.stats),
        }


def probe_config_errors(probes: Mapping[str, ProbeConfig]) -> dict[str, str]:
    """tool -> why its `expect` is not a JSON schema."""
    out = {}
    for tool, probe in probes.items():
        why = check_probe_schema(probe.expect)
        if why is not None:
            out[tool] = why
    return out
