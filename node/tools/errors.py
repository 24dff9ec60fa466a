"""Errors of the tool layer. Each carries a machine `reason` and JSON `data` for the caller.

`node.mcp.protocol.error_object` is the one place these become JSON-RPC errors.
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

from vsmcp.node.errors import NodeError, clip

# A failure's description in an error sent to a caller is cut to this length.
MAX_CAUSE_CHARS = 300


def _finite(seconds: float) -> float | None:
    return round(seconds, 3) if math.isfinite(seconds) else None


class ToolError(NodeError):
    """A call was refused or failed for a reason the caller is told about."""

    reason: ClassVar[str] = "tool_error"

    def __init__(self, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = {"reason": self.reason, **(data or {})}


class UnknownTool(ToolError):
    reason = "unknown_tool"

    def __init__(self, name: str) -> None:
        name = clip(name)  # a caller's string, echoed: kept short
        super().__init__(f"Unknown tool: {name!r}", {"tool": name})


class InvalidArguments(ToolError):
    reason = "invalid_arguments"

    def __init__(self, tool: str, problem: str, path: str) -> None:
        # The problem quotes the offending value (jsonschema: "'xxx…' is not of type
        # 'integer'"), the path names the caller's keys: both kept short.
        tool, problem, path = clip(tool), clip(problem), clip(path)
        where = f" at {path}" if path else ""
        super().__init__(
            f"Invalid arguments for tool {tool!r}{where}: {problem}",
            {"tool": tool, "path": path, "problem": problem},
        )


class ZoneDenied(ToolError):
    """The caller's zone ranks below the tool's zone."""

    reason = "zone_denied"

    def __init__(self, tool: str, caller_zone: str, tool_zone: str) -> None:
        super().__init__(
            f"Denied by policy zone-order: caller zone {caller_zone!r} may not call tool "
            f"{tool!r} in zone {tool_zone!r}",
            {"policy": "zone-order", "tool": tool, "zone": caller_zone, "tool_zone": tool_zone},
        )


class RateLimited(ToolError):
    reason = "rate_limited"

    def __init__(self, limit: str, key: str, retry_after_s: float) -> None:
        super().__init__(
            f"Rate limited ({limit} limit for {key!r}); retry after {retry_after_s:.3f} s",
            {"limit": limit, "key": key, "retry_after_s": _finite(retry_after_s)},
        )


class Overloaded(ToolError):
    """A unit's concurrency limit and its bounded wait queue are both full."""

    reason = "overloaded"

    def __init__(
        self, unit: str, max_concurrency: int, max_queue: int, retry_after_s: float
    ) -> None:
        super().__init__(
            f"Tool unit {unit!r} is busy ({max_concurrency} running, {max_queue} waiting); "
            f"retry after {retry_after_s:.3f} s",
            {
                "unit": unit,
                "limit": "concurrency",
                "max_concurrency": max_concurrency,
                "max_queue": max_queue,
                "retry_after_s": _finite(retry_after_s),
            },
        )


class HeldCallsFull(Overloaded):
    """A unit holds as many long-held calls (resource subscriptions) as it may."""

    def __init__(self, unit: str, limit: int) -> None:
        ToolError.__init__(
            self,
            f"Tool unit {unit!r} already holds {limit} resource subscriptions, its "
            "maximum; unsubscribe elsewhere or retry later",
            {"unit": unit, "limit": "held_calls", "max_held_calls": limit},
        )


class ConcurrencyLimited(Overloaded):
    """An entry's adaptive concurrency limit (`node.vsm.concurrency`) has no room for a
    call of this priority class now: refused at once, never queued."""

    def __init__(
        self, entry: str, priority: str, limit: float, in_flight: int, retry_after_s: float
    ) -> None:
        ToolError.__init__(
            self,
            f"Overloaded: {entry} is at its concurrency limit for {priority!r} calls "
            f"({in_flight} in flight, limit {limit:.0f}); retry after {retry_after_s:.3f} s",
            {
                "unit": entry,
                "limit": "adaptive_concurrency",
                "priority": priority,
                "max_concurrency": int(limit),
                "in_flight": in_flight,
                "retry_after_s": _finite(retry_after_s),
            },
        )


class WasmRuntimeBusy(Overloaded):
    """The node's WASM runtime had no room to start the call (its instance slots or
    workers held by other calls running to their deadlines): refused before it ran, not
    the tool's fault (not counted towards its quarantine); retry later or elsewhere."""

    def __init__(self, tool: str, detail: str, retry_after_s: float) -> None:
        ToolError.__init__(
            self,
            f"Tool {tool!r} not run: {detail}",
            {"tool": tool, "limit": "wasm_runtime", "retry_after_s": _finite(retry_after_s)},
        )


class Shed(Overloaded):
    """System 5 sheds calls of this priority class at the entry for now (an overload
    answer: the caller should retry later, or with a higher class)."""

    reason = "shed"

    def __init__(self, tool: str, priority: str, level: str) -> None:
        ToolError.__init__(
            self,
            f"Shed: calls of priority {priority!r} (and below {level!r}) are refused for now "
            f"by System 5; tool {tool!r} not called",
            {"tool": tool, "limit": "shed", "priority": priority, "shed_level": level},
        )


class ToolUnavailable(ToolError):
    """The tool's unit is not running: starting, restarting after a crash, or quarantined."""

    reason = "unavailable"

    def __init__(
        self,
        tool: str,
        unit: str,
        state: str,
        retry_after_s: float | None,
        cause: str | None = None,
    ) -> None:
        retry = f"; retry after {retry_after_s:.3f} s" if retry_after_s is not None else ""
        why = f" after: {cause[:MAX_CAUSE_CHARS]}" if cause else ""
        super().__init__(
            f"Tool {tool!r} is unavailable: unit {unit!r} is {state}{why}{retry}",
            {
                "tool": tool,
                "unit": unit,
                "state": state,
                "retry_after_s": None if retry_after_s is None else _finite(retry_after_s),
                "cause": cause[:MAX_CAUSE_CHARS] if cause else None,
            },
        )


class ToolQuarantined(ToolUnavailable):
    """One tool failed its unit too often: only calls to that tool are refused for a while,
    so a caller who keeps calling a crashing tool cannot take the others away."""

    reason = "tool_quarantined"

    def __init__(self, tool: str, unit: str, retry_after_s: float, cause: str | None) -> None:
        super().__init__(tool, unit, "running but this tool is quarantined", retry_after_s, cause)


class PolicyBlocked(ToolError):
    """A mitigation policy of the immune system refuses this call: its caller (origin or
    entry node) is blocked, or the tool is quarantined, until the policy expires."""

    reason = "policy_blocked"

    def __init__(self, policy_id: str, target: str, expires_at_s: float, what: str) -> None:
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at_s))
        super().__init__(
            f"Blocked by policy {policy_id!r} ({what} {target!r}) until {until}",
            {
                "policy": policy_id,
                "target": target,
                "expires_at_s": _finite(expires_at_s),
                "until": until,
            },
        )


class ShuttingDown(ToolError):
    """The node is stopping: calls in flight are cancelled so that it stops in time."""

    reason = "shutting_down"

    def __init__(self, tool: str) -> None:
        super().__init__(f"Tool {tool!r} was cancelled: the node is shutting down", {"tool": tool})


class ResultTooLarge(ToolError):
    reason = "result_too_large"

    def __init__(self, tool: str, size_bytes: int | None, max_bytes: int) -> None:
        size = "more than that" if size_bytes is None else f"{size_bytes} bytes"
        super().__init__(
            f"Tool {tool!r} answered {size}, over the cap of {max_bytes} bytes "
            "(tools.max_result_bytes); the answer was dropped",
            {"tool": tool, "size_bytes": size_bytes, "max_bytes": max_bytes},
        )


class ToolTimeout(ToolError):
    reason = "timeout"

    def __init__(self, tool: str, timeout_s: float) -> None:
        super().__init__(
            f"Tool {tool!r} did not finish within {timeout_s:.3f} s",
            {"tool": tool, "timeout_s": _finite(timeout_s)},
        )


class ProviderError(ToolError):
    """The provider answered with a protocol error (e.g. a mounted server's JSON-RPC error)."""

    reason = "provider_error"

    def __init__(self, tool: str, detail: str, upstream_code: int | None = None) -> None:
        super().__init__(
            f"Tool {tool!r} provider failed: {detail}",
            {"tool": tool, "upstream_code": upstream_code, "detail": detail},
        )


class UnitFault(NodeError):
    """Raised by a provider to say it is broken (e.g. its process died): restart it."""

    reason = "unit_fault"


class ToolFault(NodeError):
    """A call failed in a way that counts against its tool (a WASM module stopped at a
    limit): the caller gets an error result, the unit counts the fault towards the tool's
    quarantine, like a plugin that raised, but the log gets one line, not a traceback."""

    reason = "tool_fault"


class ToolConfigError(NodeError):
    """A tool, plugin or mount is declared wrongly (bad import path, duplicate name, ...)."""

    reason = "tool_config"
