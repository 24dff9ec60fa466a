"""The offline planner: the matcher over the tools a requester may use, with a refusal
that names the policy when the request plainly asks for a tool its zone may not call."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from vsmcp.node.tools.errors import ZoneDenied
from vsmcp.node.tools.model import ToolSpec
from vsmcp.node.vsm.s4.config import DEFAULT_CONFIDENCE
from vsmcp.node.vsm.s4.matcher import ToolIndex
from vsmcp.node.vsm.s4.model import Plan, Step


class OfflinePlanner:
    """Plans over `specs` (every tool this node knows, all zones); `plan` is given the
    ones the requester may call."""

    def __init__(self, specs: Sequence[ToolSpec], threshold: float = DEFAULT_CONFIDENCE) -> None:
        self.specs = list(specs)
        self.threshold = threshold
        self._index = ToolIndex(self.specs)
        self.fingerprint = ToolIndex.fingerprint(self.specs)

    def plan(self, text: str, allowed: Sequence[ToolSpec], caller_zone: str = "") -> Plan:
        match = self._index.best(text)
        if match is None:
            return Plan(planner="offline", steps=[], confidence=0.0, note=NOTHING_FITS)
        if match.confidence < self.threshold:
            return Plan(
                planner="offline",
                steps=[],
                confidence=match.confidence,
                note=unsure(match.spec.name, match.missing),
                guess=match.spec.name,
            )
        if match.spec.name not in {s.name for s in allowed}:
            refusal = ZoneDenied(match.spec.name, caller_zone, match.spec.zone).message
            return Plan(planner="offline", steps=[], confidence=match.confidence, refusal=refusal)
        note = (
            f"could not tell {', '.join(match.missing)} from the request" if match.missing else ""
        )
        return Plan(
            planner="offline",
            steps=[Step(match.spec.name, match.arguments)],
            confidence=match.confidence,
            note=note,
        )


NOTHING_FITS = "no tool I may call fits the request"


def unsure(guess: str, missing: Sequence[str]) -> str:
    lacking = f" (and the request does not say {', '.join(missing)})" if missing else ""
    return f"not sure what to run: maybe {guess}{lacking}; please say it more precisely"


def labelled_specs(tools: Sequence[Mapping[str, Any]]) -> list[ToolSpec]:
    """The labelled set's catalog (`[[tools]]` of planner_cases.toml) as tool specs."""
    return [
        ToolSpec(
            name=t["name"],
            description=t.get("description", ""),
            input_schema=json.loads(t["schema"]),
            zone=t.get("zone", "public"),
        )
        for t in tools
    ]
