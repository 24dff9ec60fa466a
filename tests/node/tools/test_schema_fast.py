"""The fast acceptance check never accepts what jsonschema refuses, and does accept the
common valid arguments (else it would save nothing)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsmcp.node.tools.builtin import ECHO_SCHEMA, NO_ARGS_SCHEMA
from vsmcp.node.tools.errors import InvalidArguments
from vsmcp.node.tools.model import ToolSpec
from vsmcp.node.tools.policy import ArgumentValidator
from vsmcp.node.tools.schema_fast import compile_schema

SCHEMAS: list[dict[str, Any]] = [
    dict(ECHO_SCHEMA),
    dict(NO_ARGS_SCHEMA),
    {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 1, "maximum": 10},
            "x": {"type": ["number", "null"], "minimum": -1.5},
            "flag": {"type": "boolean"},
            "mode": {"enum": ["a", "b", 1, True, None]},
            "tags": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "minItems": 1,
                "maxItems": 3,
            },
            "any": True,
        },
        "required": ["n"],
        "additionalProperties": {"type": "string", "maxLength": 2},
    },
    {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {
            "v": {"type": "integer"},
            "o": {"type": "object", "properties": {"k": {"type": "string"}}, "required": ["k"]},
        },
    },
    {"type": "object", "properties": {"a": {"type": "array", "items": {"enum": [0, 1]}}}},
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-20, 20)
    | st.floats(-20, 20, allow_nan=False)
    | st.sampled_from([1.0, 0.0, 2.5, 10.0])
    | st.text(max_size=4)
    | st.sampled_from(["a", "b", "", "xy", "xyz"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["n", "x", "k", "v", "o", "a", "text", "z"]), inner)
    ),
    max_leaves=8,
)
arguments = st.dictionaries(
    st.sampled_from(["n", "x", "flag", "mode", "tags", "any", "text", "v", "o", "a", "zz"]),
    json_values,
    max_size=5,
)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_never_accepts_what_jsonschema_refuses(schema: dict[str, Any]) -> None:
    fast = compile_schema(schema)
    assert fast is not None  # all of these are within the subset
    reference = jsonschema.validators.validator_for(schema)(schema)

    @settings(max_examples=150, deadline=None)
    @given(instance=arguments)
    def agrees(instance: Any) -> None:
        if fast(instance):
            assert reference.is_valid(instance)

    agrees()


def test_accepts_the_common_valid_arguments() -> None:
    schema = SCHEMAS[2]
    fast = compile_schema(schema)
    assert fast is not None
    assert fast({"text": "hi"}) is False  # n is required
    assert fast({"n": 3, "x": None, "mode": True, "tags": ["t"], "zz": "ok"})
    assert not fast({"n": True})  # a bool is not an integer
    assert not fast({"n": 3, "mode": 0})  # 0 is not in the enum (1 is)
    echo = compile_schema(ECHO_SCHEMA)
    assert echo is not None and echo({"text": "hello"})
    assert not echo({"text": "hello", "more": 1})


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "patternProperties": {"^a": {"type": "string"}}},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {}}},
        {"type": "number", "exclusiveMinimum": 0},
        {"$schema": "http://json-schema.org/draft-03/schema#", "type": "object"},
        {"type": "array", "items": [{"type": "string"}]},
        {"enum": [1.5]},
        {"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}]}}},
    ],
)
def test_outside_the_subset_there_is_no_fast_check(schema: dict[str, Any]) -> None:
    assert compile_schema(schema) is None


def test_refusals_keep_jsonschemas_message() -> None:
    validator = ArgumentValidator()
    spec = ToolSpec(name="echo", description="", input_schema=ECHO_SCHEMA)
    validator.check(spec, {"text": "a"})  # compiles, then the fast path
    validator.check(spec, {"text": "b"})
    with pytest.raises(InvalidArguments) as refused:
        validator.check(spec, {"text": 5})
    assert "5 is not of type 'string'" in str(refused.value)
    with pytest.raises(InvalidArguments) as extra:
        validator.check(spec, {"text": "a", "other": 1})
    assert "Additional properties are not allowed" in str(extra.value)
