"""Built-in tools: `echo` and the node introspection tools `vsm.status`, `vsm.peers`, `vsm.tools`,
`vsm.signal` (raise pain or pleasure on the algedonic channel) and `vsm.probe` (run this
node's System 3* probe of one of its tools: how callers check a degraded provider).

The introspection tools take a callable that returns the data (the node passes its
own views); a tool whose callable is not given is not offered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from vsmcp.node.tools.functions import FunctionProvider, PluginTool
from vsmcp.node.tools.model import CallContext, ToolResult, text_result, to_result
from vsmcp.node.tools.node_offers import node_offers_tool

BUILTIN_UNIT = "builtin"
MAX_ECHO_CHARS = 64 * 1024

ECHO_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "maxLength": MAX_ECHO_CHARS, "description": "Text to return"}
    },
    "required": ["text"],
    "additionalProperties": False,
}

NO_ARGS_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {},
    "additionalProperties": False,
}

DataView = Callable[[], Any]
# `signal(arguments, ctx)`: raise the signal; returns what the caller is told.
SignalHandler = Callable[[Mapping[str, Any], CallContext], Mapping[str, Any]]

# `probe(arguments, ctx)`: run the probe of `arguments["tool"]` (node/vsm/audits.py).
ProbeHandler = Callable[[Mapping[str, Any], CallContext], Awaitable[ToolResult]]

PROBE_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "tool": {"type": "string", "minLength": 1, "maxLength": 256},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
    },
    "required": ["tool"],
    "additionalProperties": False,
}

SIGNAL_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "valence": {"type": "string", "enum": ["pain", "pleasure"]},
        "intensity": {"type": "number", "minimum": 0, "maximum": 1},
        "reason": {"type": "string", "maxLength": 500},
        "source": {
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "description": "who raises it; default: the caller's origin",
        },
    },
    "required": ["valence", "intensity", "reason"],
    "additionalProperties": False,
}


async def echo(arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
    """Return the `text` argument unchanged."""
    return text_result(str(arguments["text"]))


def _view_tool(name: str, description: str, view: DataView, zone: str) -> PluginTool:
    async def run(arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        data = view()
        # MCP structuredContent must be an object; lists are wrapped under their name.
        return to_result(data if isinstance(data, Mapping) else {name.split(".")[-1]: data})

    return PluginTool(
        name=name, fn=run, description=description, input_schema=NO_ARGS_SCHEMA, zone=zone
    )


def _signal_tool(signal: SignalHandler, zone: str) -> PluginTool:
    async def run(arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        return to_result(dict(signal(arguments, ctx)))

    return PluginTool(
        name="vsm.signal",
        fn=run,
        description=(
            "Raise pain or pleasure on this node's algedonic channel: above the threshold "
            "it reaches System 5 at once, below it System 3 aggregates it."
        ),
        input_schema=SIGNAL_SCHEMA,
        zone=zone,
    )


def builtin_provider(
    *,
    status: DataView | None = None,
    peers: DataView | None = None,
    tools: DataView | None = None,
    introspection_zone: str = "public",
    signal: SignalHandler | None = None,
    signal_zone: str = "restricted",
    probe: ProbeHandler | None = None,
) -> FunctionProvider:
    """The built-in unit. Introspection tools sit in `introspection_zone`; `vsm.signal`
    (offered when `signal` is given) in `signal_zone`."""

    def load() -> list[PluginTool]:
        out = [
            PluginTool(
                name="echo",
                fn=echo,
                description="Return the given text unchanged.",
                input_schema=ECHO_SCHEMA,
            )
        ]
        views = (
            ("vsm.status", "This node's status: identity, VSM systems, viability.", status),
            ("vsm.peers", "The peers this node knows and their states.", peers),
            ("vsm.tools", "The tools of the mesh as this node sees them.", tools),
        )
        out.extend(
            _view_tool(name, description, view, introspection_zone)
            for name, description, view in views
            if view is not None
        )
        if status is not None:
            out.append(node_offers_tool(status, introspection_zone))
        if signal is not None:
            out.append(_signal_tool(signal, signal_zone))
        if probe is not None:
            out.append(_probe_tool(probe, introspection_zone))
        return out

    return FunctionProvider(BUILTIN_UNIT, load, kind="builtin")


def _probe_tool(probe: ProbeHandler, zone: str) -> PluginTool:
    async def run(arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        return await probe(arguments, ctx)

    return PluginTool(
        name="vsm.probe",
        fn=run,
        description=(
            "Run this node's System 3* probe of one of its tools: "
            '{"ok": true|false|null (no probe declared), "detail": ...}.'
        ),
        input_schema=PROBE_SCHEMA,
        zone=zone,
    )
