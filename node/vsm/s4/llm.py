"""The LLM planner: the mesh's tools as Messages API tool definitions, the tool-use loop,
every proposed call checked before it runs. The `anthropic` SDK (extra `llm`) is imported
at the first request that uses it, never by an idle node.

Tool names: the API allows `[a-zA-Z0-9_-]{1,64}`, mesh names have dots
(`time.get_current_time`): each tool gets an API name and the answer is mapped back.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vsmcp.node.errors import NodeError
from vsmcp.node.tools.model import ToolSpec
from vsmcp.node.vsm.s4.config import LlmConfig
from vsmcp.node.vsm.s4.model import Step, StepOutcome
from vsmcp.node.vsm.s4.summary import clip

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

SYSTEM_PROMPT = (
    "You are System 4 of a vsmcp mesh node. Answer the user's request by calling the "
    "tools given (only those; each call is checked against the caller's zone and the "
    "tool's schema before it runs). When a call is refused or fails, say so plainly. "
    "When no tool fits, say that you cannot do it. Keep the answer short."
)
EXPLAIN_PROMPT = (
    "You are System 4 of a vsmcp mesh node. Explain this observation of the mesh to its "
    "operator in at most three sentences: what it means and what to do about it."
)
MAX_EXPLANATION_CHARS = 1000
# The whole request (every turn, in and out) may use this many times `max_tokens`.
TOKEN_BUDGET_FACTOR = 8
# The offline answer is the fallback: a failed request is not retried.
MAX_RETRIES = 0
API_NAME = re.compile(r"[^a-zA-Z0-9_-]")
API_NAME_MAX = 64

# A proposed call: (tool, arguments) → its outcome (checked, then run or not).
Execute = Callable[[str, object], Awaitable[StepOutcome]]
# (tool, arguments) → why it must not run, or None.
Check = Callable[[str, object], "str | None"]


class LlmUnavailable(NodeError):
    """The Messages API did not answer usefully: the offline planner answers instead."""


@dataclass(slots=True)
class LlmResult:
    text: str
    steps: list[StepOutcome] = field(default_factory=list)
    note: str = ""


def api_names(specs: Sequence[ToolSpec]) -> dict[str, ToolSpec]:
    """API name → tool (unique, within the API's alphabet and length)."""
    out: dict[str, ToolSpec] = {}
    for spec in specs:
        base = API_NAME.sub("_", spec.name)[:API_NAME_MAX] or "tool"
        name, n = base, 1
        while name in out:
            n += 1
            suffix = f"_{n}"
            name = base[: API_NAME_MAX - len(suffix)] + suffix
        out[name] = spec
    return out


def _mesh_names(names: dict[str, ToolSpec], known: Sequence[ToolSpec]) -> dict[str, str]:
    """API name → mesh name, for the tools offered and for every tool known (a model
    naming one it was not offered is then refused naming the policy, not "unknown")."""
    out = {API_NAME.sub("_", spec.name)[:API_NAME_MAX]: spec.name for spec in known}
    out.update((api, spec.name) for api, spec in names.items())
    return out


def tool_definitions(names: dict[str, ToolSpec]) -> list[dict[str, Any]]:
    return [
        {
            "name": api,
            "description": (spec.description or spec.title or spec.name)[:1024],
            "input_schema": dict(spec.input_schema) or {"type": "object"},
        }
        for api, spec in names.items()
    ]


class LlmPlanner:
    def __init__(self, config: LlmConfig) -> None:
        self._config = config
        self._client: AsyncAnthropic | None = None
        self._client_key = ""

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _api(self, key: str) -> AsyncAnthropic:
        if self._client is None or key != self._client_key:
            from anthropic import AsyncAnthropic

            self._client = AsyncAnthropic(
                api_key=key,
                base_url=self._config.base_url or None,
                timeout=self._config.timeout_s,
                max_retries=MAX_RETRIES,
            )
            self._client_key = key
        return self._client

    async def _turn(
        self,
        key: str,
        tools: list[dict[str, Any]],
        messages: list[Any],
        system: str = SYSTEM_PROMPT,
    ) -> Any:
        import anthropic

        # No tools (an explanation): the key is left out rather than sent empty.
        extra: dict[str, Any] = {"tools": tools} if tools else {}
        try:
            return await self._api(key).messages.create(
                model=self._config.model,
                max_tokens=self._config.max_tokens,
                system=system,
                messages=messages,
                **extra,
            )
        except anthropic.APITimeoutError as e:
            raise LlmUnavailable(f"no answer within {self._config.timeout_s:g} s") from e
        except anthropic.APIStatusError as e:
            raise LlmUnavailable(f"HTTP {e.status_code}: {clip(str(e.message), 200)}") from e
        except anthropic.APIError as e:
            raise LlmUnavailable(clip(str(e), 200)) from e

    async def explain(self, key: str, note: str) -> str:
        """The environment scan's template note in the model's words ("" if it said nothing)."""
        message = await self._turn(key, [], [{"role": "user", "content": note}], EXPLAIN_PROMPT)
        said = "\n".join(b.text for b in message.content if b.type == "text").strip()
        return clip(said, MAX_EXPLANATION_CHARS)

    async def propose(
        self,
        key: str,
        text: str,
        specs: Sequence[ToolSpec],
        check: Check,
        known: Sequence[ToolSpec] = (),
    ) -> tuple[list[Step], list[str]]:
        """A dry run: the calls the model's first turn proposes, (valid, problems)."""
        names = api_names(specs)
        mesh_name = _mesh_names(names, known)
        message = await self._turn(
            key, tool_definitions(names), [{"role": "user", "content": text}]
        )
        steps, problems = [], []
        for block in message.content:
            if block.type != "tool_use":
                continue
            tool = mesh_name.get(block.name, block.name)
            problem = check(tool, block.input)
            if problem is None:
                steps.append(Step(tool, dict(block.input)))
            else:
                problems.append(f"{tool}: {problem}")
        return steps, problems

    async def run(
        self,
        key: str,
        text: str,
        specs: Sequence[ToolSpec],
        execute: Execute,
        known: Sequence[ToolSpec] = (),
    ) -> LlmResult:
        """The tool-use loop: at most `max_steps` turns and the token budget."""
        names = api_names(specs)
        mesh_name = _mesh_names(names, known)
        tools = tool_definitions(names)
        messages: list[Any] = [{"role": "user", "content": text}]
        result = LlmResult(text="")
        budget = self._config.max_tokens * TOKEN_BUDGET_FACTOR
        used = 0
        for _ in range(self._config.max_steps):
            try:
                message = await self._turn(key, tools, messages)
            except LlmUnavailable as e:
                if not result.steps:
                    raise
                # Calls already ran: the offline planner must not run them again.
                result.note = f"the language model failed after the calls ran ({e})"
                return result
            used += message.usage.input_tokens + message.usage.output_tokens
            said = "\n".join(b.text for b in message.content if b.type == "text").strip()
            calls = [b for b in message.content if b.type == "tool_use"]
            if message.stop_reason != "tool_use" or not calls:
                result.text = said
                if message.stop_reason == "max_tokens":
                    result.note = "the model's answer was cut at llm.max_tokens"
                return result
            messages.append(
                {"role": "assistant", "content": [b.model_dump() for b in message.content]}
            )
            replies = []
            for block in calls:
                tool = mesh_name.get(block.name, block.name)
                outcome = await execute(tool, block.input)
                result.steps.append(outcome)
                content = (
                    outcome.result if outcome.outcome in ("ok", "error_result") else outcome.error
                )
                replies.append(
                    {
                        "type": "tool_result",
                        "tool_use_id": block.id,
                        "content": content or outcome.outcome,
                        "is_error": outcome.outcome != "ok",
                    }
                )
            messages.append({"role": "user", "content": replies})
            if used >= budget:
                result.note = f"stopped at the token budget ({budget} tokens)"
                return result
        result.note = f"stopped after llm.max_steps = {self._config.max_steps} turns"
        return result
