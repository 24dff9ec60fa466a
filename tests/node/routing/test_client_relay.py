"""The entry node's relay of providers' asks to a call's client: only the provider of a
call in flight is served, one call's asks are capped, and they end with the attempt."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from tests.polling import async_wait_for, async_wait_until
from vsmcp.mesh.envelope import MsgType
from vsmcp.node.mcp.client_requests import ClientRequests, ClientState
from vsmcp.node.routing.client_relay import (
    MAX_ANSWER_BYTES,
    MAX_ASKS_PER_CALL,
    ClientAsk,
    ClientRelay,
    RelayedCall,
)
from vsmcp.node.routing.wire import decode_error
from vsmcp.node.tools.client_channel import ClientRequestFailed, check_request

PROVIDER = "p" * 32
CALL_ID = 7


class Client:
    def __init__(self) -> None:
        self.written: list[dict[str, Any]] = []

    async def write(self, message: dict[str, Any]) -> None:
        self.written.append(message)

    def requests(self) -> list[dict[str, Any]]:
        return [m for m in self.written if "id" in m]


def _call(
    client: Client, deadline_in_s: float = 60, registry: ClientRequests | None = None
) -> RelayedCall:
    state = ClientState("s1", frozenset({"sampling"}), log_level="info")
    channel = (registry or ClientRequests()).channel(state, client.write)
    return RelayedCall(PROVIDER, channel, asyncio.get_running_loop().time() + deadline_in_s)


def _ask(method: str = "sampling/createMessage", call_id: int = CALL_ID) -> bytes:
    return msgspec.msgpack.encode(ClientAsk(call_id=call_id, method=method, params={}))


def _cause(answer: tuple[MsgType, bytes]) -> str:
    kind, payload = answer
    assert kind == MsgType.ERROR
    return str(decode_error(payload).data["cause"])


async def test_only_the_provider_of_a_call_in_flight_is_served() -> None:
    client = Client()
    call = _call(client)
    relay = ClientRelay(lambda call_id: call if call_id == CALL_ID else None)
    assert _cause(await relay.serve_ask("x" * 32, _ask())) == "unknown_call"
    assert _cause(await relay.serve_ask(PROVIDER, _ask(call_id=CALL_ID + 1))) == "unknown_call"
    assert relay.counts["unknown_call"] == 2 and client.written == []
    kind, _ = await relay.serve_ask(PROVIDER, _ask("notifications/message"))
    assert kind == MsgType.RESULT


async def test_one_calls_asks_are_capped_and_end_with_its_attempt() -> None:
    client = Client()
    call = _call(client)
    relay = ClientRelay(lambda call_id: call)
    asks = [asyncio.create_task(relay.serve_ask(PROVIDER, _ask())) for _ in range(100)]

    async def all_placed() -> bool:
        return sum(t.done() for t in asks) == 100 - MAX_ASKS_PER_CALL

    await async_wait_for(all_placed, timeout_s=10, what="the asks over the cap refused")
    assert len(client.requests()) == MAX_ASKS_PER_CALL
    assert {_cause(t.result()) for t in asks if t.done()} == {"busy"}
    # The attempt ends (failed over, answered): its asks still waiting end too.
    call.end()
    answers = await asyncio.gather(*asks)
    assert sum(_cause(a) == "call_ended" for a in answers) == MAX_ASKS_PER_CALL
    assert relay.pending == 0 and not call.asks


async def test_no_ask_is_sent_once_the_deadline_has_passed() -> None:
    client = Client()
    call = _call(client, deadline_in_s=-1)
    relay = ClientRelay(lambda call_id: call)
    assert _cause(await relay.serve_ask(PROVIDER, _ask())) == "timeout"
    assert client.written == []


@pytest.mark.parametrize("size", [1, 64])
async def test_one_session_has_a_share_of_the_pending_requests(size: int) -> None:
    client = Client()
    requests = ClientRequests(max_per_session=size)
    state = ClientState("s1", frozenset({"sampling"}))
    channel = requests.channel(state, client.write)
    waiting = [
        asyncio.create_task(channel.request("sampling/createMessage", {}, 30)) for _ in range(size)
    ]

    async def sent() -> bool:
        return len(client.requests()) == size

    await async_wait_for(sent, timeout_s=10, what="the session's share sent")
    with pytest.raises(ClientRequestFailed, match="already wait for this client"):
        await channel.request("sampling/createMessage", {}, 30)
    other = requests.channel(ClientState("s2", frozenset({"sampling"})), client.write)
    another = asyncio.create_task(other.request("sampling/createMessage", {}, 30))
    await async_wait_until(
        lambda: len(client.requests()) == size + 1, timeout_s=10, what="another session asks"
    )
    requests.cancel_owner("s1")
    requests.cancel_owner("s2")
    await asyncio.gather(*waiting, another, return_exceptions=True)
    assert requests.pending == 0


async def test_an_answer_larger_than_the_mesh_carries_is_refused_with_the_reason() -> None:
    client, registry = Client(), ClientRequests()
    call = _call(client, registry=registry)
    relay = ClientRelay(lambda call_id: call)
    asking = asyncio.create_task(relay.serve_ask(PROVIDER, _ask()))
    await async_wait_until(lambda: client.requests(), timeout_s=10, what="the request sent")
    huge = {"type": "text", "text": "x" * (MAX_ANSWER_BYTES + 1)}
    assert registry.answer(
        "s1",
        {
            "id": client.requests()[0]["id"],
            "result": {"role": "assistant", "content": huge, "model": "m"},
        },
    )
    assert _cause(await asking) == "too_large"


async def test_a_request_is_checked_alike_at_both_ends() -> None:
    """The gateway and the provider's relay channel refuse with one check."""
    client = Client()
    channel = ClientRequests().channel(ClientState("s1", frozenset()), client.write)
    for method, cause in (("sampling/createMessage", "no_capability"), ("x/y", "unsupported")):
        with pytest.raises(ClientRequestFailed) as at_gateway:
            await channel.request(method, {}, 5)
        with pytest.raises(ClientRequestFailed) as checked:
            check_request(method, frozenset())
        assert at_gateway.value.cause == checked.value.cause == cause
        assert at_gateway.value.code == checked.value.code == -32601
    assert client.written == []
