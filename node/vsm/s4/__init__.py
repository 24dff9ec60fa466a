"""System 4: the planner (natural language → zone-checked tool calls) and the
environment scan (adaptation proposals). See docs/planner.md.

Public API: `Planner`, `Plan`, `Answer`, `Step`, `StepOutcome` (planner, model);
`EnvironmentScan` (scan); `LlmConfig`, `S4Config` (config). Nothing here imports the
`anthropic` SDK until an LLM plan is asked for, nor the matcher until a first request.
"""

from __future__ import annotations

from vsmcp.node.vsm.s4.config import LlmConfig, S4Config
from vsmcp.node.vsm.s4.model import Answer, Plan, Step, StepOutcome

__all__ = [
    "Answer",
    "LlmConfig",
    "Plan",
    "S4Config",
    "Step",
    "StepOutcome",
]
