"""Tool results and outcomes as the sentences of a human reply."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from vsmcp.node.tools.model import ToolResult
from vsmcp.node.vsm.s4.model import StepOutcome

# A result's text in a reply (and in what the model is sent back) is cut to this.
MAX_RESULT_CHARS = 2000


def clip(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def result_text(result: ToolResult) -> str:
    """A tool result as text: structured content or JSON text as `key: value` lines."""
    structured = result.get("structuredContent")
    if isinstance(structured, Mapping) and structured:
        return clip(_pairs(structured))
    parts = []
    content = result.get("content")
    for item in content if isinstance(content, list) else ():
        if isinstance(item, Mapping) and item.get("type") == "text":
            parts.append(_readable(str(item.get("text", ""))))
        elif isinstance(item, Mapping):
            parts.append(f"[{item.get('type', 'content')}]")
    return clip("\n".join(p for p in parts if p))


def _readable(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return _pairs(value) if isinstance(value, Mapping) else text


def _pairs(value: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k}: {v if isinstance(v, str | int | float | bool) else json.dumps(v, default=str)}"
        for k, v in value.items()
    )


def describe(outcome: StepOutcome) -> str:
    """One step's line in a reply."""
    if outcome.outcome == "ok":
        return f"{outcome.tool}: {outcome.result}" if outcome.result else f"{outcome.tool}: done"
    if outcome.outcome == "error_result":
        return f"{outcome.tool} reported an error: {outcome.result or 'no details'}"
    if outcome.outcome == "not_run":
        return f"{outcome.tool} was not run: {outcome.error}"
    return f"{outcome.tool} was refused ({outcome.outcome}): {outcome.error}"


def summarise(outcomes: Sequence[StepOutcome]) -> str:
    return "\n".join(describe(o) for o in outcomes)
