"""The planner (System 4): a request in words → tool calls over what the requester's zone
may call, run through the mesh under the requester's context, summarised back.

With an API key (`[llm]`) the language model plans through the tool-use loop; without
one, or when the API fails, the offline matcher does (the answer says so). Every call
either proposes is checked (`checks.CallChecker`) before it runs, and then runs through
the mesh catalog, which applies the zone, rate limits and schema again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

from vsmcp.node.tools.errors import ToolError
from vsmcp.node.tools.model import CallContext, ToolSpec
from vsmcp.node.vsm.s4.checks import CallChecker
from vsmcp.node.vsm.s4.config import LlmConfig, S4Config
from vsmcp.node.vsm.s4.model import Answer, Plan, StepOutcome
from vsmcp.node.vsm.s4.summary import result_text, summarise

# Telegram's message limit; a longer request is refused, not cut.
MAX_REQUEST_CHARS = 4096
PLANNER_ORIGIN = "s4:planner"


class Planner:
    """`catalog` is the node's mesh catalog (`list_tools(ctx)`, `call_tool(...)`);
    `zones` the mesh's zones, lowest first."""

    def __init__(
        self,
        catalog: Any,
        zones: Sequence[str],
        s4: S4Config | None = None,
        llm: LlmConfig | None = None,
    ) -> None:
        self._catalog = catalog
        self._zones = tuple(zones)
        self._s4 = s4 or S4Config()
        self._llm_config = llm
        self._checker = CallChecker()
        self._offline: Any = None
        self._llm: Any = None
        self.stats: Counter[str] = Counter()
        # Requests planned at once (each may hold a model's turns and tool calls).
        self._slots = asyncio.Semaphore(self._s4.max_concurrent)

    # -- what may be called ------------------------------------------------------------

    def _known(self) -> list[ToolSpec]:
        """Every tool this node can reach, whatever its zone (to name the policy that
        refuses one; never to call it)."""
        top = CallContext(
            caller_id=PLANNER_ORIGIN, caller_zone=self._zones[-1], origin=PLANNER_ORIGIN
        )
        tools: list[ToolSpec] = self._catalog.list_tools(top)
        return tools

    def _offline_planner(self, known: list[ToolSpec]) -> Any:
        # Imported at the first request: an idle node holds no matcher, index nor city table.
        from vsmcp.node.vsm.s4.matcher import ToolIndex
        from vsmcp.node.vsm.s4.offline import OfflinePlanner

        if self._offline is None or self._offline.fingerprint != ToolIndex.fingerprint(known):
            self._offline = OfflinePlanner(known, self._s4.confidence)
        return self._offline

    async def _offline_plan(
        self, text: str, known: list[ToolSpec], allowed: list[ToolSpec], zone: str
    ) -> Plan:
        # Off the event loop: a long request takes tens of milliseconds to match, and the
        # loop meanwhile carries the mesh's heartbeats.
        offline = self._offline_planner(known)
        plan: Plan = await asyncio.to_thread(offline.plan, text, allowed, zone)
        return plan

    def _llm_planner(self) -> Any:
        from vsmcp.node.vsm.s4.llm import LlmPlanner

        if self._llm is None:
            assert self._llm_config is not None
            self._llm = LlmPlanner(self._llm_config)
        return self._llm

    async def explain(self, note: str) -> str | None:
        """A scan proposal's note explained by the language model; None without a key or
        when the API fails (the template note stands)."""
        key = self._key()
        if not key:
            return None
        from vsmcp.node.vsm.s4.llm import LlmUnavailable

        try:
            said: str = await self._llm_planner().explain(key, note)
        except LlmUnavailable:
            self.stats["llm_failed"] += 1
            return None
        self.stats["explained"] += 1
        return said or None

    async def aclose(self) -> None:
        """Close the Messages API client's connections (if one was made)."""
        if self._llm is not None:
            await self._llm.aclose()

    def _key(self) -> str | None:
        return self._llm_config.api_key() if self._llm_config is not None else None

    def view(self) -> dict[str, Any]:
        return {
            "llm": "configured" if self._key() else "off (no API key): offline",
            "requests": dict(self.stats),
        }

    # -- plans -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Every slot (`vsm.s4.max_concurrent`) is taken: a new request would wait."""
        return self._slots.locked()

    async def plan(self, text: str, ctx: CallContext) -> Plan:
        """A dry run: what would run, and how sure the planner is."""
        async with self._slots:
            return await self._plan(text, ctx)

    async def answer(self, text: str, ctx: CallContext) -> Answer:
        """Plan and run; the reply says what ran, what was refused and why."""
        async with self._slots:
            return await self._answer(text, ctx)

    async def _plan(self, text: str, ctx: CallContext) -> Plan:
        too_long = _too_long(text)
        if too_long:
            return Plan(planner="offline", steps=[], confidence=0.0, note=too_long)
        known = self._known()
        allowed: list[ToolSpec] = self._catalog.list_tools(ctx)
        key = self._key()
        note = ""
        if key:
            from vsmcp.node.vsm.s4.llm import LlmUnavailable

            def check(tool: str, arguments: object) -> str | None:
                return self._checker.problem(tool, arguments, allowed, known, ctx.caller_zone)

            try:
                steps, problems = await self._llm_planner().propose(
                    key, text, allowed, check, known
                )
            except LlmUnavailable as e:
                self.stats["llm_failed"] += 1
                note = _fallback_note(e)
            else:
                self.stats["plan_llm"] += 1
                total = len(steps) + len(problems)
                confidence = len(steps) / total if total else 0.0
                return Plan(
                    planner="llm",
                    steps=steps,
                    confidence=confidence,
                    note="; ".join(f"not run: {p}" for p in problems),
                )
        self.stats["plan_offline"] += 1
        plan = await self._offline_plan(text, known, allowed, ctx.caller_zone)
        if note:
            plan = Plan(
                planner="offline",
                steps=plan.steps,
                confidence=plan.confidence,
                note="; ".join(n for n in (note, plan.note) if n),
                refusal=plan.refusal,
                guess=plan.guess,
            )
        return plan

    async def _answer(self, text: str, ctx: CallContext) -> Answer:
        too_long = _too_long(text)
        if too_long:
            return Answer(text=too_long, planner="offline")
        known = self._known()
        allowed: list[ToolSpec] = self._catalog.list_tools(ctx)

        async def execute(tool: str, arguments: object) -> StepOutcome:
            return await self._execute(tool, arguments, ctx, allowed, known)

        key = self._key()
        note = ""
        if key:
            from vsmcp.node.vsm.s4.llm import LlmUnavailable

            try:
                result = await self._llm_planner().run(key, text, allowed, execute, known)
            except LlmUnavailable as e:
                self.stats["llm_failed"] += 1
                note = _fallback_note(e)
            else:
                self.stats["answer_llm"] += 1
                reply = result.text or summarise(result.steps) or "The model gave no answer."
                if result.note:
                    reply += f"\n({result.note})"
                return Answer(text=reply, planner="llm", steps=result.steps, note=result.note)
        self.stats["answer_offline"] += 1
        plan = await self._offline_plan(text, known, allowed, ctx.caller_zone)
        outcomes = [await execute(step.tool, step.arguments) for step in plan.steps]
        if plan.refusal:
            self.stats["refused"] += 1
            reply = f"I can't do that: {plan.refusal}."
        elif not outcomes:
            self.stats["unsure"] += 1
            reply = f"I'm not sure how to help: {plan.note}."
        else:
            reply = summarise(outcomes)
        notes = [n for n in (note, plan.note if outcomes else "") if n]
        if notes:
            reply += "\n(" + "; ".join(notes) + ")"
        return Answer(text=reply, planner="offline", steps=outcomes, note="; ".join(notes))

    async def _execute(
        self,
        tool: str,
        arguments: object,
        ctx: CallContext,
        allowed: list[ToolSpec],
        known: list[ToolSpec],
    ) -> StepOutcome:
        args = CallChecker.arguments(arguments)
        problem = self._checker.problem(tool, arguments, allowed, known, ctx.caller_zone)
        if problem is not None:
            self.stats["not_run"] += 1
            return StepOutcome(tool=tool, arguments=args, outcome="not_run", error=problem)
        try:
            result = await self._catalog.call_tool(tool, args, ctx)
        except ToolError as e:
            return StepOutcome(tool=tool, arguments=args, outcome=e.reason, error=e.message)
        outcome = "error_result" if result.get("isError") else "ok"
        return StepOutcome(tool=tool, arguments=args, outcome=outcome, result=result_text(result))


def _too_long(text: str) -> str:
    if not text.strip():
        return "the request is empty"
    if len(text) > MAX_REQUEST_CHARS:
        return f"the request is {len(text)} characters long; at most {MAX_REQUEST_CHARS} are read"
    return ""


def _fallback_note(error: Exception) -> str:
    return f"the language model failed ({error}); this is the offline planner's answer"
