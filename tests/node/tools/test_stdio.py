"""The capped stdio transport, at the message level, with a server that is a few lines."""

from __future__ import annotations

import sys

import anyio
import mcp_types as types
import pytest
from mcp.shared.message import SessionMessage

from vsmcp.node.tools.stdio import (
    ID_PREFIX_BYTES,
    RESULT_TOO_LARGE,
    StdioLaunch,
    StdioStats,
    dropped_message_id,
    stdio_transport,
)

# Answers each request line with a result of `size` bytes, its "id" key where `layout`
# says (last, as some servers order keys, by default), and an "id" nested in the result
# before or after it if asked.
SERVER = r"""
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    size, layout = req["params"]["size"], req["params"].get("layout", "id_last")
    outer = '"jsonrpc": "2.0", "id": ' + json.dumps(req["id"])
    pad = '"pad": "' + "x" * size + '"'
    if layout == "nested_id_before":
        body = '{"result": {"id": 999, ' + pad + '}, ' + outer + '}'
    elif layout == "nested_id_after":
        body = '{' + outer + ', "result": {' + pad + ', "id": 999}}'
    else:
        body = '{"result": {' + pad + '}, ' + outer + '}'
    sys.stdout.write(body + "\n")
    sys.stdout.flush()
"""


ANSWER_TIMEOUT_S = 30.0


def launch(cap: int) -> StdioLaunch:
    return StdioLaunch(
        mount="t",
        command=sys.executable,
        args=("-c", SERVER),
        max_message_bytes=cap,
        stop_grace_s=0.5,
    )


def request(request_id: int | str, size: int, layout: str = "id_last") -> SessionMessage:
    params = {"size": size, "layout": layout}
    return SessionMessage(
        types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method="x", params=params)
    )


@pytest.mark.parametrize(
    ("request_id", "layout"),
    [(7, "id_last"), ("req-7", "id_last"), (7, "nested_id_before"), (7, "nested_id_after")],
)
async def test_an_answer_over_the_cap_becomes_an_error_for_its_request(
    request_id: int | str, layout: str
) -> None:
    stats = StdioStats()
    # Bounded: without an answer for its id, the call would wait for ever.
    with anyio.fail_after(ANSWER_TIMEOUT_S):
        async with stdio_transport(launch(10_000), stats) as (read, write):
            await write.send(request(request_id, 200_000, layout))
            reply = await read.receive()
            assert isinstance(reply, SessionMessage)
            error = reply.message
            assert isinstance(error, types.JSONRPCError) and error.id == request_id
            assert error.error.code == RESULT_TOO_LARGE
            data = error.error.data
            assert isinstance(data, dict) and data["max_bytes"] == 10_000
            assert 200_000 < data["size_bytes"] < 200_100
            # The connection carries on.
            await write.send(request(8, 10))
            reply = await read.receive()
            assert isinstance(reply, SessionMessage)
            assert isinstance(reply.message, types.JSONRPCResponse) and reply.message.id == 8
    assert stats.oversized_messages == 1


PAD = b"x" * 300  # longer than what is kept of either end


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"jsonrpc": "2.0", "id": 7, "result": {"id": 9, "p": "' + PAD + b'"}}', 7),
        (b'{"result": {"id": 9, "p": "' + PAD + b'"}, "jsonrpc": "2.0", "id": 7}', 7),
        (b'{"result": {"p": "' + PAD + b'", "id": 9}, "jsonrpc": "2.0", "id": 7}', 7),
        (b'{"result": {"p": "' + PAD + b'"}, "id": "a", "jsonrpc": "2.0", "x": {"id": 9}}', "a"),
        (b'{"params": [{"id": 9}], "p": "' + PAD + b'", "jsonrpc": "2.0", "id": 7}', 7),
        # A quoted `"id":` inside a string value is text, not a key.
        (b'{"result": {"p": "' + PAD + b'", "q": "\\"id\\": 9"}, "id": 7}', 7),
        (b'{"result": {"id": 9, "p": "' + PAD + b'"}, "more": {"id": 8}}', None),
    ],
)
def test_the_id_of_a_dropped_line_is_the_outer_objects(line: bytes, expected: object) -> None:
    prefix, tail = line[:ID_PREFIX_BYTES], line[-ID_PREFIX_BYTES:]
    assert dropped_message_id(prefix, tail) == expected
