"""The capped stdio transport, at the message level, with a server that is a few lines."""

from __future__ import annotations

import sys

import anyio
import mcp_types as types
import pytest
from mcp.shared.message import SessionMessage

from vsmcp.node.tools.stdio import RESULT_TOO_LARGE, StdioLaunch, StdioStats, stdio_transport

# Answers each request line with a result of `size` bytes, its "id" key last (as some
# servers order keys), then one normal answer.
SERVER = r"""
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    size = req["params"]["size"]
    tail = '"}, "jsonrpc": "2.0", "id": ' + json.dumps(req["id"]) + "}"
    body = '{"result": {"pad": "' + "x" * size + tail
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


def request(request_id: int | str, size: int) -> SessionMessage:
    return SessionMessage(
        types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method="x", params={"size": size})
    )


@pytest.mark.parametrize("request_id", [7, "req-7"])
async def test_an_answer_over_the_cap_becomes_an_error_for_its_request(
    request_id: int | str,
) -> None:
    stats = StdioStats()
    # Bounded: without an answer for its id, the call would wait for ever.
    with anyio.fail_after(ANSWER_TIMEOUT_S):
        async with stdio_transport(launch(10_000), stats) as (read, write):
            await write.send(request(request_id, 200_000))
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
