"""`[llm]` (the planner's language model) and `[vsm.s4]` (System 4's planner and scan).

Validated by the node's config loader through `check`, which names the key of a bad value.
"""

from __future__ import annotations

import math
import os
from typing import Annotated

import msgspec

from vsmcp.node.errors import ConfigError
from vsmcp.node.tools.config import doc

DEFAULT_MODEL = "claude-sonnet-4-5"
MAX_LLM_STEPS = 32
MAX_LLM_TOKENS = 200_000
MAX_S4_SECONDS = 86_400.0
# The offline matcher's confidence floor: on the labelled set every right match scored
# 0.5 or more, every request nothing fits matched no tool at all (docs/planner.md).
DEFAULT_CONFIDENCE = 0.4


class LlmConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    api_key_env: Annotated[
        str,
        doc(
            "environment variable holding the Anthropic API key; unset or empty: the "
            "planner runs offline (the intent matcher)"
        ),
    ] = "ANTHROPIC_API_KEY"
    model: Annotated[str, doc("the Messages API model the planner asks")] = DEFAULT_MODEL
    base_url: Annotated[
        str, doc("the Messages API's base URL; \"\": the SDK's default (api.anthropic.com)")
    ] = ""
    timeout_s: Annotated[
        float, doc("one Messages API request's timeout; past it the answer is the offline one")
    ] = 30.0
    max_steps: Annotated[
        int, doc("model turns of one request's tool-use loop, at most (each may call tools)")
    ] = 6
    max_tokens: Annotated[
        int,
        doc("tokens one model turn may write; the whole request stops at 8 times this, in+out"),
    ] = 1024

    def api_key(self) -> str | None:
        """The key, read when a request is planned (so a rotated key is used at once)."""
        return os.environ.get(self.api_key_env) or None


class S4Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    confidence: Annotated[
        float,
        doc(
            "the offline matcher's confidence in [0, 1] below which it says it is unsure "
            "instead of calling a tool"
        ),
    ] = DEFAULT_CONFIDENCE
    scan_interval_s: Annotated[
        float, doc("how often the environment scan compares peers, tools, KPIs and bridges, s")
    ] = 5.0
    degraded_after_s: Annotated[
        float,
        doc("how long a peer stays suspect or a bridge down before the scan proposes action, s"),
    ] = 600.0
    error_ratio: Annotated[
        float, doc("System 3's call error ratio in [0, 1] above which the scan proposes action")
    ] = 0.2
    max_concurrent: Annotated[
        int,
        doc(
            "planner requests handled at once; /api/plan and /api/ask answer 503 while all "
            "are taken, a bridge's request waits for one"
        ),
    ] = 8
    max_proposals: Annotated[
        int, doc("proposals /api/vsm keeps (the newest); each is also an event")
    ] = 50


def check(llm: LlmConfig, s4: S4Config) -> None:
    """Raise `ConfigError` naming the first bad key."""
    if not llm.api_key_env or not llm.api_key_env.replace("_", "a").isalnum():
        raise ConfigError("llm.api_key_env", "must be an environment variable's name")
    if not llm.model:
        raise ConfigError("llm.model", "must name a model")
    if llm.base_url and not llm.base_url.startswith(("http://", "https://")):
        raise ConfigError("llm.base_url", "must be an http:// or https:// URL, or empty")
    if not (0 < llm.timeout_s <= 600 and math.isfinite(llm.timeout_s)):
        raise ConfigError("llm.timeout_s", f"{llm.timeout_s} is out of range (0..600 s]")
    if not 1 <= llm.max_steps <= MAX_LLM_STEPS:
        raise ConfigError("llm.max_steps", f"must be in 1..{MAX_LLM_STEPS}")
    if not 1 <= llm.max_tokens <= MAX_LLM_TOKENS:
        raise ConfigError("llm.max_tokens", f"must be in 1..{MAX_LLM_TOKENS}")
    for key, value in (("confidence", s4.confidence), ("error_ratio", s4.error_ratio)):
        if not 0 <= value <= 1:
            raise ConfigError(f"vsm.s4.{key}", f"{value} is not in [0, 1]")
    for key, value in (
        ("scan_interval_s", s4.scan_interval_s),
        ("degraded_after_s", s4.degraded_after_s),
    ):
        if not (0 < value <= MAX_S4_SECONDS and math.isfinite(value)):
            raise ConfigError(f"vsm.s4.{key}", f"{value} is out of range (0..{MAX_S4_SECONDS:g} s]")
    if not 1 <= s4.max_concurrent <= 1024:
        raise ConfigError("vsm.s4.max_concurrent", "must be in 1..1024")
    if not 1 <= s4.max_proposals <= 10_000:
        raise ConfigError("vsm.s4.max_proposals", "must be in 1..10000")
