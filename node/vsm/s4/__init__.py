"""System 4: the planner (natural language → zone-checked tool calls) and the
environment scan (adaptation proposals). See docs/planner.md.

Public API: `Planner`, `Plan`, `Answer`, `Step`, `StepOutcome` (planner, model);
`EnvironmentScan` (scan); `LlmConfig`, `S4Config` (config). Nothing here imports the
`anthropic` SDK until an LLM plan is asked for, nor the matcher until a first request.
"""

from __future__ import annotations

from vsmcp.node.vsm.s4.config import LlmConfig, S4Config
from vsmcp.node.vsm.s4.model import Answer, Plan, Step, StepOutcome
from vsmcp.node.vsm.s4.planner import Planner
from vsmcp.node.vsm.s4.scan import EnvironmentScan

__all__ = [
    "Answer",
    "EnvironmentScan",
    "LlmConfig",
    "Plan",
    "Planner",
    "S4Config",
    "Step",
    "StepOutcome",
]
