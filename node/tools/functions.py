"""A provider that serves Python callables as tools (built-ins and plugins use it).

Two forms of tool function, told apart by the first parameter's name:
- the dict form, `fn(arguments, ctx)` (or `fn(arguments)`): the arguments dict
  positionally, the schema declared by hand (`@tool(input_schema=...)` or config);
- the keyword form, as the MCP SDK's `@mcp.tool()` takes it: `def add(a: int, b: int)
  -> int`, called with keyword arguments, its input schema, description and structured
  output derived from the signature and docstring (`node.tools.signature`, imported
  only when such a function is loaded).
Either may be async or sync; a sync function runs in a worker thread so it cannot stall
the event loop (the unit's concurrency limit bounds the threads).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

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
# The first parameter's name that marks the dict form `fn(arguments, ctx)`.
DICT_FORM_PARAMETER: Final = "arguments"


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginTool:
    """A Python tool as a plugin module or an entry point declares it."""

    name: str
    fn: ToolFunction
    description: str = ""
    # None: the keyword form's derived schema, or any object for the dict form.
    input_schema: Mapping[str, Any] | None = None
    zone: str = "public"
    annotations: Mapping[str, Any] | None = None

    def spec(
        self,
        provider: ProviderKind,
        input_schema: Mapping[str, Any] | None = None,
        output_schema: Mapping[str, Any] | None = None,
        docstring: str | None = None,
    ) -> ToolSpec:
        """`docstring`: the description when none is set (default: the function's
        docstring's first paragraph)."""
        if docstring is None:
            docstring = (inspect.getdoc(self.fn) or "").split("\n\n")[0]
        schema = input_schema if input_schema is not None else self.input_schema
        return ToolSpec(
            name=self.name,
            description=self.description or docstring,
            input_schema=schema if schema is not None else dict(EMPTY_OBJECT_SCHEMA),
            zone=self.zone,
            provider=provider,
            annotations=self.annotations,
            output_schema=output_schema,
        )


def tool(
    *,
    name: str | None = None,
    description: str = "",
    input_schema: Mapping[str, Any] | None = None,
    zone: str = "public",
) -> Callable[[ToolFunction], PluginTool]:
    """Decorator for plugin modules: `@tool(input_schema={...})` on `fn(arguments, ctx)`,
    or `@tool(zone=...)` on a keyword-form function (its schema derived)."""

    def wrap(fn: ToolFunction) -> PluginTool:
        return PluginTool(
            name=name or fn.__name__,
            fn=fn,
            description=description,
            input_schema=input_schema,
            zone=zone,
        )

    return wrap


def _parameters(fn: ToolFunction) -> list[inspect.Parameter] | None:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None  # no signature to read (a builtin): the dict form, as always


def takes_arguments_dict(fn: ToolFunction) -> bool:
    """The dict form: the first parameter is `arguments` (or `*args`)."""
    params = _parameters(fn)
    if params is None:
        return True
    return bool(params) and (
        params[0].name == DICT_FORM_PARAMETER or params[0].kind is inspect.Parameter.VAR_POSITIONAL
    )


def _wants_ctx(fn: ToolFunction) -> bool:
    params = _parameters(fn)
    if params is None:
        return True
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) != 1 or positional[0].kind is inspect.Parameter.VAR_POSITIONAL


ToolCall = Callable[[Mapping[str, Any], CallContext], Awaitable[ToolResult]]


def _dict_form_call(fn: ToolFunction) -> ToolCall:
    is_async = inspect.iscoroutinefunction(fn)
    wants_ctx = _wants_ctx(fn)

    async def call(arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        args: tuple[Any, ...] = (dict(arguments), ctx) if wants_ctx else (dict(arguments),)
        if is_async:
            value = await fn(*args)
        else:
            value = await asyncio.to_thread(fn, *args)
            if inspect.isawaitable(value):
                value = await value
        return _to_result(value)

    return call


@dataclass(frozen=True, slots=True)
class _Bound:
    spec: ToolSpec
    call: ToolCall


def _bound(t: PluginTool, kind: ProviderKind) -> _Bound:
    if takes_arguments_dict(t.fn):
        return _Bound(t.spec(kind), _dict_form_call(t.fn))
    # Imported here: the SDK's server machinery is heavy, and only this form needs it.
    from vsmcp.node.tools.signature import keyword_tool

    derived = keyword_tool(t.name, t.fn, t.input_schema)
    # The whole docstring, as the SDK's tool decorator describes a function.
    spec = t.spec(kind, derived.input_schema, derived.output_schema, inspect.getdoc(t.fn) or "")
    return _Bound(spec, derived.call)


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
            bound[t.name] = _bound(t, self._kind)
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
        return await bound.call(arguments, ctx)
