"""Python tools written as the MCP SDK writes them: `def add(a: int, b: int) -> int`.

The input schema, the output schema and the structured result come from the function's
signature through the official SDK's own machinery (`func_metadata`, what the SDK's
`@mcp.tool()` uses), so a function behaves here as it does in an SDK server. The SDK's
server package is heavy (≈1.5 s, ≈600 modules), so this module is imported only when
a plugin of this form is loaded, never by an idle node.

A parameter annotated `CallContext` receives the call's context and is not part of the
schema. A function that also declares a schema (`@tool(input_schema=...)`, or
`input_schema` in config) must agree with it: every parameter a property, every
property a parameter, the parameters without a default required. Otherwise the plugin
is refused at load, with the reason.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic
from mcp.server.mcpserver.exceptions import InvalidSignature
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata, func_metadata

from vsmcp.node.tools.errors import InvalidArguments, ToolConfigError
from vsmcp.node.tools.model import CallContext, ToolResult


@dataclass(frozen=True, slots=True)
class KeywordTool:
    """A keyword-argument function, its schemas, and how to call it."""

    name: str
    fn: Callable[..., Any]
    meta: FuncMetadata
    ctx_param: str | None
    input_schema: Mapping[str, Any]
    output_schema: Mapping[str, Any] | None

    async def call(self, arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        try:
            kwargs = self.meta.validate_arguments(dict(arguments))
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(p) for p in first["loc"])
            raise InvalidArguments(self.name, first["msg"], f"arguments.{path}") from None
        if self.ctx_param is not None:
            kwargs[self.ctx_param] = ctx
        if inspect.iscoroutinefunction(self.fn):
            value = await self.fn(**kwargs)
        else:
            # A sync function runs in a worker thread so it cannot stall the event loop.
            value = await asyncio.to_thread(lambda: self.fn(**kwargs))
            if inspect.isawaitable(value):
                value = await value
        # A value that does not fit the declared return type raises here: a fault of
        # the tool, counted like any exception it raises.
        result = self.meta.convert_result(value)
        out: ToolResult = result.model_dump(by_alias=True, exclude_none=True, mode="json")
        out.pop("resultType", None)  # the gateway writes it for the revision it speaks
        return out


def _context_param(fn: Callable[..., Any], hints: Mapping[str, Any]) -> str | None:
    for name, annotation in hints.items():
        if name == "return":
            continue
        candidates = (annotation, *typing.get_args(annotation))
        if any(inspect.isclass(c) and issubclass(c, CallContext) for c in candidates):
            return name
    return None


def _refuse_unnamed(name: str, sig: inspect.Signature) -> None:
    for p in sig.parameters.values():
        if p.kind is p.POSITIONAL_ONLY:
            raise ToolConfigError(
                f"tool {name!r}: parameter {p.name!r} is positional-only; "
                "a tool's arguments are passed by name"
            )
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ToolConfigError(
                f"tool {name!r}: *{p.name} has no schema; declare the arguments as named parameters"
            )


def _check_declared(
    name: str, declared: Mapping[str, Any], params: Mapping[str, inspect.Parameter]
) -> None:
    """Refuse a declared schema the signature cannot honour (which calls would fail)."""
    properties = declared.get("properties", {})
    required = declared.get("required", [])
    if declared.get("type", "object") != "object" or not isinstance(properties, Mapping):
        raise ToolConfigError(f"tool {name!r}: its declared input schema is not an object schema")
    signature = f"{name}({', '.join(params)})"
    for param in params.values():
        if param.name not in properties:
            raise ToolConfigError(
                f"tool {name!r}: parameter {param.name!r} of {signature} is not a property of "
                "its declared input schema"
            )
        if param.default is inspect.Parameter.empty and param.name not in required:
            raise ToolConfigError(
                f"tool {name!r}: parameter {param.name!r} of {signature} has no default, but "
                "its declared input schema does not require it"
            )
    for prop in properties:
        if prop not in params:
            raise ToolConfigError(
                f"tool {name!r}: declared property {prop!r} is not a parameter of {signature}"
            )


def keyword_tool(
    name: str, fn: Callable[..., Any], declared: Mapping[str, Any] | None
) -> KeywordTool:
    """Derive `fn`'s schemas as the SDK does; raises `ToolConfigError` naming why not."""
    try:
        sig = inspect.signature(fn, eval_str=True)
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError, ValueError) as exc:
        raise ToolConfigError(f"tool {name!r}: cannot read its signature: {exc}") from exc
    _refuse_unnamed(name, sig)
    ctx_param = _context_param(fn, hints)
    params = {n: p for n, p in sig.parameters.items() if n != ctx_param}
    if declared is not None:
        _check_declared(name, declared, params)
    try:
        meta = func_metadata(fn, skip_names=[ctx_param] if ctx_param else [])
        derived = meta.arg_model.model_json_schema(by_alias=True)
    except (InvalidSignature, pydantic.PydanticUserError, ValueError, TypeError) as exc:
        raise ToolConfigError(f"tool {name!r}: {exc}") from exc
    return KeywordTool(
        name=name,
        fn=fn,
        meta=meta,
        ctx_param=ctx_param,
        input_schema=declared if declared is not None else derived,
        output_schema=meta.output_schema,
    )
