"""Python tool functions in both forms: the dict form `fn(arguments, ctx)` and the MCP
SDK's keyword form (`def add(a: int, b: int) -> int`, schemas derived)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

import pytest

from vsmcp.node.tools.errors import InvalidArguments, ToolConfigError
from vsmcp.node.tools.functions import FunctionProvider, PluginTool, takes_arguments_dict, tool
from vsmcp.node.tools.model import CallContext

CTX = CallContext(caller_id="t", caller_zone="public", origin="test")
AB_SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
}


def add(a: int, b: int) -> int:
    """Add two integers.

    The second paragraph is part of the description too, as in the SDK."""
    return a + b


async def scaled(values: list[float], ctx: CallContext, factor: float = 2.0) -> dict[str, Any]:
    return {"values": [v * factor for v in values], "caller": ctx.caller_id}


def dict_add(arguments: Mapping[str, Any]) -> dict[str, int]:
    return {"sum": arguments["a"] + arguments["b"]}


def _provider(*tools: PluginTool) -> FunctionProvider:
    return FunctionProvider("plugin:t", lambda: list(tools))


async def _call(provider: FunctionProvider, name: str, arguments: Mapping[str, Any]) -> Any:
    return await provider.call(name, arguments, CTX)


def test_the_form_is_told_by_the_first_parameter() -> None:
    assert takes_arguments_dict(dict_add)
    assert takes_arguments_dict(lambda arguments, ctx: None)
    assert takes_arguments_dict(lambda *args: None)  # fn(arguments, ctx), as before
    assert not takes_arguments_dict(add)
    assert not takes_arguments_dict(scaled)
    assert not takes_arguments_dict(lambda: None)


async def test_a_keyword_function_gets_the_sdk_schemas_and_keyword_arguments() -> None:
    provider = _provider(PluginTool(name="add", fn=add))
    (spec,) = provider.tools()
    assert spec.input_schema["properties"] == {
        "a": {"title": "A", "type": "integer"},
        "b": {"title": "B", "type": "integer"},
    }
    assert spec.input_schema["required"] == ["a", "b"]
    assert spec.output_schema is not None
    assert spec.output_schema["properties"]["result"]["type"] == "integer"
    assert spec.description.startswith("Add two integers.")
    assert "second paragraph" in spec.description
    result = await _call(provider, "add", {"a": 20, "b": 22})
    assert result == {
        "content": [{"type": "text", "text": "42"}],
        "structuredContent": {"result": 42},
        "isError": False,
    }


async def test_an_async_keyword_function_gets_its_context_and_defaults() -> None:
    provider = _provider(PluginTool(name="scaled", fn=scaled))
    (spec,) = provider.tools()
    assert set(spec.input_schema["properties"]) == {"values", "factor"}  # no ctx
    assert spec.input_schema["required"] == ["values"]
    result = await _call(provider, "scaled", {"values": [1, 2.5]})
    assert result["structuredContent"] == {"values": [2.0, 5.0], "caller": "t"}
    result = await _call(provider, "scaled", {"values": [1], "factor": 3})
    assert result["structuredContent"]["values"] == [3.0]


async def test_arguments_the_signature_refuses_are_invalid_arguments() -> None:
    provider = _provider(PluginTool(name="add", fn=add))
    with pytest.raises(InvalidArguments, match=r"arguments\.b"):
        await _call(provider, "add", {"a": 1, "b": "not a number"})


async def test_the_dict_form_with_a_declared_schema_keeps_working() -> None:
    provider = _provider(tool(name="add", input_schema=AB_SCHEMA)(dict_add))
    (spec,) = provider.tools()
    assert spec.input_schema == AB_SCHEMA
    assert spec.output_schema is None
    result = await _call(provider, "add", {"a": 1, "b": 2})
    assert result["structuredContent"] == {"sum": 3}


async def test_a_keyword_function_matching_its_declared_schema_is_served() -> None:
    provider = _provider(tool(name="add", input_schema=AB_SCHEMA)(add))
    (spec,) = provider.tools()
    assert spec.input_schema == AB_SCHEMA  # what was declared is what clients see
    assert (await _call(provider, "add", {"a": 2, "b": 3}))["structuredContent"] == {"result": 5}


def _mismatch(a: int, c: int) -> int:
    return a + c


def _optional_b(a: int, b: int) -> int:
    return a + b


def _extra(a: int, b: int, c: int = 0) -> int:
    return a + b + c


def _kwargs(**values: int) -> int:
    return sum(values.values())


def _positional_only(a: int, /) -> int:
    return a


@pytest.mark.parametrize(
    ("fn", "schema", "reason"),
    [
        (_mismatch, AB_SCHEMA, "parameter 'c' of t(a, c) is not a property"),
        (_optional_b, {**AB_SCHEMA, "required": ["a"]}, "parameter 'b' of t(a, b) has no default"),
        (_extra, AB_SCHEMA, "parameter 'c' of t(a, b, c) is not a property"),
        (add, {**AB_SCHEMA, "properties": {"a": {}, "b": {}, "d": {}}}, "property 'd' is not"),
        (add, {"type": "array"}, "not an object schema"),
        (_kwargs, None, "*values has no schema"),
        (_positional_only, None, "'a' is positional-only"),
    ],
)
def test_a_signature_that_does_not_match_is_refused_at_load(
    fn: Any, schema: Mapping[str, Any] | None, reason: str
) -> None:
    with pytest.raises(ToolConfigError, match=f"tool 't': .*{re.escape(reason)}"):
        _provider(PluginTool(name="t", fn=fn, input_schema=schema))


async def test_a_sync_keyword_function_runs_off_the_event_loop() -> None:
    loop_thread: list[bool] = []

    def where(flag: bool) -> bool:
        try:
            asyncio.get_running_loop()
            loop_thread.append(True)
        except RuntimeError:
            loop_thread.append(False)
        return flag

    provider = _provider(PluginTool(name="where", fn=where))
    result = await _call(provider, "where", {"flag": True})
    assert result["structuredContent"] == {"result": True}
    assert loop_thread == [False]


async def test_the_decorator_on_a_keyword_function_derives_its_schema() -> None:
    provider = _provider(tool(name="plus", zone="ops")(add))
    (spec,) = provider.tools()
    assert spec.zone == "ops"
    assert spec.input_schema["required"] == ["a", "b"]
    assert (await _call(provider, "plus", {"a": 1, "b": 1}))["structuredContent"] == {"result": 2}
