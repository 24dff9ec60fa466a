"""What the planner produces: a plan (a dry run) and an answer (the plan run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

PlannerKind = Literal["llm", "offline"]


@dataclass(frozen=True, slots=True)
class Step:
    """One tool call of a plan."""

    tool: str
    arguments: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"tool": self.tool, "arguments": self.arguments}


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """`steps` is empty when nothing fits, the planner is unsure, or policy refuses;
    `refusal` then says which policy, `note` what else the user should know."""

    planner: PlannerKind
    steps: list[Step]
    confidence: float
    note: str = ""
    refusal: str = ""
    # The offline matcher's best guess when it is unsure (named to the user, not run).
    guess: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "planner": self.planner,
            "steps": [s.to_json() for s in self.steps],
            "confidence": round(self.confidence, 3),
        }
        if self.note:
            out["note"] = self.note
        if self.refusal:
            out["refusal"] = self.refusal
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class StepOutcome:
    """What one call did: `outcome` is `ok`, `error_result`, `not_run` (refused before it
    ran: `error` says why) or a tool layer refusal's reason (`zone_denied`, ...)."""

    tool: str
    arguments: dict[str, Any]
    outcome: str
    result: str = ""
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tool": self.tool, "arguments": self.arguments}
        out["outcome"] = self.outcome
        if self.result:
            out["result"] = self.result
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """A human reply (`text`) and what ran to get it."""

    text: str
    planner: PlannerKind
    steps: list[StepOutcome] = field(default_factory=list)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text,
            "planner": self.planner,
            "steps": [s.to_json() for s in self.steps],
        }
        if self.note:
            out["note"] = self.note
        return out
