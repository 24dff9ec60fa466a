"""The invocation wire codec: round trips, size caps, ToolError <-> InvokeError."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsmcp.node.mcp.protocol import error_object
from vsmcp.node.routing.wire import (
    MAX_ATTEMPTS,
    CallProgress,
    InvokeCodecError,
    InvokeRequest,
    attempts_left,
    decode_error,
    decode_progress,
    decode_request,
    decode_result,
    encode,
    error_from_tool_error,
    tool_error_from,
)
from vsmcp.node.tools.errors import (
    InvalidArguments,
    Overloaded,
    ProviderError,
    RateLimited,
    ToolError,
    ToolTimeout,
    ToolUnavailable,
    UnknownTool,
    ZoneDenied,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    arguments=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    causality=st.lists(st.text(max_size=20), max_size=5).map(tuple),
    timeout_ms=st.integers(0, 10**9),
    progress=st.booleans(),
)
def test_request_round_trip(
    arguments: dict[str, Any], causality: tuple[str, ...], timeout_ms: int, progress: bool
) -> None:
    request = InvokeRequest(
        call_id=7,
        tool="time.get_current_time",
        arguments=arguments,
        caller_id="token:ci",
        caller_zone="ops",
        origin="http:ci",
        trace_id="t" * 32,
        causality=causality,
        timeout_ms=timeout_ms,
        progress=progress,
    )
    assert decode_request(encode(request)) == request


def test_progress_and_result_round_trip() -> None:
    progress = CallProgress(call_id=3, progress=1.0, total=3.0, message="step 1")
    assert decode_progress(encode(progress)) == progress
    result = {"content": [{"type": "text", "text": "hi"}], "isError": False}
    assert decode_result(encode(result)) == result


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x91", encode({"content": "not a list"}), encode(["x", 2, 3])],
)
def test_garbage_is_a_codec_error(payload: bytes) -> None:
    for decode in (decode_request, decode_error, decode_progress, decode_result):
        with pytest.raises(InvokeCodecError):
            decode(payload)


def test_oversize_fields_are_refused() -> None:
    request = InvokeRequest(
        call_id=1,
        tool="x" * 300,
        arguments={},
        caller_id="c",
        caller_zone="public",
        origin="o",
        trace_id="t",
    )
    with pytest.raises(InvokeCodecError):
        decode_request(encode(request))


@pytest.mark.parametrize(
    "error",
    [
        UnknownTool("nope"),
        InvalidArguments("add", "'a' is a required property", ""),
        ZoneDenied("ops.restart", "public", "ops"),
        RateLimited("per-tool", "add", 0.75),
        Overloaded("debug", 16, 64, 0.2),
        ToolUnavailable("add", "plugin:add", "quarantined", 12.0),
        ToolTimeout("slow", 1.5),
        ProviderError("time.x", "upstream said no", -32000),
    ],
)
def test_tool_errors_cross_the_wire_as_the_same_jsonrpc_error(error: ToolError) -> None:
    back = tool_error_from(decode_error(encode(error_from_tool_error(error))))
    assert type(back) is type(error)
    assert error_object(back) == error_object(error)


def test_unknown_reason_keeps_the_providers_reason() -> None:
    from vsmcp.node.routing.wire import InvokeError

    back = tool_error_from(InvokeError(reason="brand_new", message="new thing", data={"x": 1}))
    assert type(back) is ToolError
    assert back.data == {"reason": "brand_new", "x": 1}
    assert back.message == "new thing"


def _request(**kw: Any) -> InvokeRequest:
    fields: dict[str, Any] = {
        "call_id": 1,
        "tool": "t",
        "arguments": {},
        "caller_id": "c",
        "caller_zone": "public",
        "origin": "http:x",
        "trace_id": "t",
    }
    return InvokeRequest(**{**fields, **kw})


def test_priority_and_attempt_travel_and_older_requests_get_the_defaults() -> None:
    request = _request(priority="high", attempt=2)
    assert decode_request(encode(request)) == request
    # An older entry node's request: the fields before `priority` only.
    before = InvokeRequest.__struct_fields__.index("priority")
    older = msgspec.msgpack.encode(msgspec.to_builtins(request)[:before])
    decoded = decode_request(older)
    assert (decoded.priority, decoded.attempt) == ("normal", 1)


def test_the_clients_way_back_travels_and_older_requests_have_none() -> None:
    request = _request(client=True, client_caps=("elicitation", "sampling"), log_level="info")
    assert decode_request(encode(request)) == request
    before = InvokeRequest.__struct_fields__.index("client")
    older = decode_request(msgspec.msgpack.encode(msgspec.to_builtins(request)[:before]))
    assert (older.client, older.client_caps, older.log_level) == (False, (), "")


def test_an_older_node_ignores_the_appended_fields() -> None:
    class OlderRequest(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
        call_id: int
        tool: str
        arguments: dict[str, Any]
        caller_id: str
        caller_zone: str
        origin: str
        trace_id: str
        causality: tuple[str, ...] = ()
        timeout_ms: int = 0
        progress: bool = False

    request = _request(priority="critical", attempt=3)
    old = msgspec.msgpack.decode(encode(request), type=OlderRequest)
    assert (old.tool, old.call_id) == ("t", 1)


def test_attempts_beyond_the_mesh_bound_are_refused() -> None:
    bad = msgspec.to_builtins(_request())
    bad[-1] = MAX_ATTEMPTS + 1
    with pytest.raises(InvokeCodecError):
        decode_request(msgspec.msgpack.encode(bad))


def test_attempts_left_counts_every_provider_tried_the_local_unit_included() -> None:
    assert attempts_left([]) == MAX_ATTEMPTS == 3
    assert attempts_left(["entry"]) == 2  # the entry's own unit refused: two remote left
    assert attempts_left(["a", "b", "c"]) == 0
    assert attempts_left(["a", "b", "c", "d"]) == 0
