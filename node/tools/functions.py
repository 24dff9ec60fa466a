"""A provider that serves Python callables as tools (built-ins and plugins use it).

A tool function is called as `fn(arguments, ctx)` (or `fn(arguments)` when it takes
one parameter). It may be async or sync; a sync function runs in a worker thread so
it cannot stall the event loop (the unit's concurrency limit bounds the threads).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vsmcp.node.tools.errors import ToolConfigError, UnknownTool
from vsmcp.node.tools.model import (
    EMPTY_OBJECT_SCHEMA,
    CallContext,
    ProviderKind,
    ToolResult,
    ToolSpec,
)
from vsmcp.node.tools.model import to_result as _to_result

ToolFunction = Callable[..., Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginTool:
    """A Python tool as a plugin module or an entry point declares it."""

    name: str
    fn: ToolFunction
    description: str = ""
    input_schema: Mapping[str, Any] = field(default_factory=lambda: dict(EMPTY_OBJECT_SCHEMA))
    zone: str = "public"
    annotations: Mapping[str, Any] | None = None

    def spec(self, provider: ProviderKind) -> ToolSpec:
        return ToolSpec(
            name=self.name,
            description=self.description or (inspect.getdoc(self.fn) or "").split("\n\n")[0],
            input_schema=self.input_schema,
            zone=self.zone,
            provider=provider,
            annotations=self.annotations,
        )


def tool(
    *,
    name: str | None = None,
    description: str = "",
    input_schema: Mapping[str, Any] | None = None,
    zone: str = "public",
) -> Callable[[ToolFunction], PluginTool]:
    """Decorator for plugin modules: `@tool(input_schema={...})` on `fn(arguments, ctx)`."""

    def wrap(fn: ToolFunction) -> PluginTool:
        return PluginTool(
            name=name or fn.__name__,
            fn=fn,
            description=description,
            input_schema=input_schema if input_schema is not None else dict(EMPTY_OBJECT_SCHEMA),
            zone=zone,
        )

    return wrap


def _wants_ctx(fn: ToolFunction) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) != 1 or positional[0].kind is inspect.Parameter.VAR_POSITIONAL


@dataclass(frozen=True, slots=True)
class _Bound:
    spec: ToolSpec
    fn: ToolFunction
    is_async: bool
    wants_ctx: bool


class FunctionProvider:
    """Serves `PluginTool`s. `load` (re)builds them on every (re)start of the unit."""

    def __init__(
        self,
        name: str,
        load: Callable[[], Sequence[PluginTool]],
        *,
        kind: ProviderKind = "plugin",
    ) -> None:
        self._name = name
        self._load = load
        self._kind = kind
        self._tools: dict[str, _Bound] = {}
        self._declared: tuple[ToolSpec, ...] = ()
        # Declared up front so the catalog can index the names before the first start.
        self._bind(load())

    @property
    def name(self) -> str:
        return self._name

    def _bind(self, tools: Sequence[PluginTool]) -> None:
        bound: dict[str, _Bound] = {}
        for t in tools:
            if t.name in bound:
                raise ToolConfigError(f"unit {self._name!r} declares tool {t.name!r} twice")
            bound[t.name] = _Bound(
                spec=t.spec(self._kind),
                fn=t.fn,
                is_async=inspect.iscoroutinefunction(t.fn),
                wants_ctx=_wants_ctx(t.fn),
            )
        self._tools = bound
        self._declared = tuple(b.spec for b in bound.values())

    def tools(self) -> Sequence[ToolSpec]:
        return self._declared

    async def run(self, ready: Callable[[], None], stop: asyncio.Event) -> None:
        self._bind(self._load())
        ready()
        await stop.wait()

    async def call(self, tool: str, arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        bound = self._tools.get(tool)
        if bound is None:
            raise UnknownTool(tool)
        args: tuple[Any, ...] = (dict(arguments), ctx) if bound.wants_ctx else (dict(arguments),)
        if bound.is_async:
            value = await bound.fn(*args)
        else:
            value = await asyncio.to_thread(bound.fn, *args)
            if inspect.isawaitable(value):
                value = await value
        return _to_result(value)
