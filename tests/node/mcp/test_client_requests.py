"""The gateway's server-to-client requests: matched by id and session, checked, bounded
by a timeout and by cancellation, and never left pending."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tests.polling import async_wait_for
from vsmcp.node.mcp.client_requests import (
    ClientRequests,
    ClientState,
    Notify,
    modern_state,
    set_level,
)
from vsmcp.node.mcp.input_rounds import InputRounds, RoundsError
from vsmcp.node.tools.client_channel import ClientRequestFailed, check_answer, log_wanted

SAMPLED = {"role": "assistant", "content": {"type": "text", "text": "hi"}, "model": "m"}


class Client:
    """The client end of a session: what the gateway wrote to it."""

    def __init__(self) -> None:
        self.written: list[dict[str, Any]] = []

    async def write(self, message: dict[str, Any]) -> None:
        self.written.append(message)

    async def asked(self) -> dict[str, Any]:
        async def any_request() -> bool:
            return any("id" in m for m in self.written)

        await async_wait_for(any_request, timeout_s=5, what="a request to the client")
        return next(m for m in self.written if "id" in m)


def _state(*caps: str, owner: str = "s1") -> ClientState:
    return ClientState(owner, frozenset(caps))


async def test_an_answer_from_the_session_resolves_its_request() -> None:
    registry, client = ClientRequests(), Client()
    channel = registry.channel(_state("sampling"), client.write)
    call = asyncio.create_task(channel.request("sampling/createMessage", {"messages": []}, 5))
    request = await client.asked()
    assert request["method"] == "sampling/createMessage"
    assert registry.pending == 1
    # Another session cannot answer it.
    assert not registry.answer("s2", {"id": request["id"], "result": SAMPLED})
    assert registry.answer("s1", {"id": request["id"], "result": SAMPLED})
    assert await call == SAMPLED
    assert registry.pending == 0
    assert registry.counts["answered"] == 1 and registry.counts["unmatched_answer"] == 1


@pytest.mark.parametrize(
    ("answer", "cause"),
    [
        ({"result": "garbage"}, "malformed_answer"),
        ({"result": {"role": "assistant", "content": "x", "model": "m"}}, "malformed_answer"),
        ({"error": {"code": -1, "message": "no"}}, "client_error"),
    ],
)
async def test_garbage_or_an_error_is_a_clear_failure(answer: dict[str, Any], cause: str) -> None:
    registry, client = ClientRequests(), Client()
    channel = registry.channel(_state("sampling"), client.write)
    call = asyncio.create_task(channel.request("sampling/createMessage", {}, 5))
    request = await client.asked()
    registry.answer("s1", {"id": request["id"], **answer})
    with pytest.raises(ClientRequestFailed) as failed:
        await call
    assert failed.value.cause == cause
    assert registry.pending == 0


async def test_no_answer_times_out_and_a_cancelled_call_tells_the_client() -> None:
    registry, client = ClientRequests(), Client()
    channel = registry.channel(_state("roots"), client.write)
    with pytest.raises(ClientRequestFailed, match=r"did not answer within 0\.05 s"):
        await channel.request("roots/list", {}, 0.05)
    assert registry.pending == 0
    assert client.written[-1]["method"] == "notifications/cancelled"
    client = Client()
    channel = registry.channel(_state("roots"), client.write)
    call = asyncio.create_task(channel.request("roots/list", {}, 5))
    request = await client.asked()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert registry.pending == 0
    assert client.written[-1]["method"] == "notifications/cancelled"
    assert client.written[-1]["params"]["requestId"] == request["id"]


async def test_refusals_before_anything_is_sent() -> None:
    registry, client = ClientRequests(), Client()
    channel = registry.channel(_state("sampling"), client.write)
    with pytest.raises(ClientRequestFailed, match="did not declare the 'elicitation'"):
        await channel.request("elicitation/create", {}, 5)
    with pytest.raises(ClientRequestFailed, match="not a server-to-client request"):
        await channel.request("tools/call", {}, 5)
    modern = registry.channel(modern_state({}, {"sampling": {}}), client.write)
    with pytest.raises(ClientRequestFailed, match="2026-07-28"):
        await modern.request("sampling/createMessage", {}, 5)
    assert client.written == [] and registry.pending == 0


async def test_the_session_ending_fails_its_requests() -> None:
    registry, client = ClientRequests(), Client()
    channel = registry.channel(_state("sampling"), client.write)
    call = asyncio.create_task(channel.request("sampling/createMessage", {}, 5))
    await client.asked()
    registry.cancel_owner("s1")
    with pytest.raises(ClientRequestFailed, match="session ended"):
        await call
    assert registry.pending == 0


async def test_logs_pass_at_the_level_set() -> None:
    registry, client = ClientRequests(), Client()
    state = _state()
    channel = registry.channel(state, client.write)
    await channel.log({"level": "error", "data": "before any level"})
    assert set_level(state, {"level": "warning"}) is None
    assert set_level(state, {"level": "loud"}) is not None
    for level in ("debug", "warning", "emergency", "nonsense"):
        await channel.log({"level": level, "data": level})
    assert [m["params"]["data"] for m in client.written] == ["warning", "emergency"]
    assert log_wanted("debug", "debug") and not log_wanted(None, "emergency")


def test_answers_are_checked_for_their_methods_shape() -> None:
    assert check_answer("roots/list", {"roots": [{"uri": "file:///x"}]})
    assert check_answer("elicitation/create", {"action": "decline"})
    for method, bad in [
        ("roots/list", {"roots": [{"name": "no uri"}]}),
        ("elicitation/create", {"action": "maybe"}),
        ("sampling/createMessage", {**SAMPLED, "model": 3}),
    ]:
        with pytest.raises(ClientRequestFailed, match="malformed"):
            check_answer(method, bad)


# -- 2026-07-28: input_required rounds ------------------------------------------------------


def _asking_call(
    requests: ClientRequests, timeout_s: float
) -> Callable[[Notify, ClientState], Coroutine[Any, Any, dict[str, Any]]]:
    async def start(notify: Notify, state: ClientState) -> dict[str, Any]:
        channel = requests.channel(state, notify)
        answer = await channel.request("sampling/createMessage", {"messages": []}, timeout_s)
        return {"content": [{"type": "text", "text": answer["content"]["text"]}]}

    return start


async def test_a_round_asks_and_the_retry_gets_the_result() -> None:
    requests = ClientRequests()
    rounds = InputRounds(requests)
    start = _asking_call(requests, 5)
    first = await rounds.call("me", {}, None, frozenset({"sampling"}), None, start)
    assert first["resultType"] == "input_required"
    ((key, asked),) = first["inputRequests"].items()
    assert asked["method"] == "sampling/createMessage"
    with pytest.raises(RoundsError):  # another caller cannot resume it
        await rounds.call(
            "other", {"requestState": first["requestState"]}, None, frozenset(), None, start
        )
    retry = {"requestState": first["requestState"], "inputResponses": {key: SAMPLED}}
    final = await rounds.call("me", retry, None, frozenset(), None, start)
    assert final == {"content": [{"type": "text", "text": "hi"}]}
    assert rounds.parked == 0 and requests.pending == 0


async def test_a_client_that_never_retries_leaves_nothing_parked() -> None:
    requests = ClientRequests()
    rounds = InputRounds(requests)
    first = await rounds.call(
        "me", {}, None, frozenset({"sampling"}), None, _asking_call(requests, 0.05)
    )
    assert first["resultType"] == "input_required"

    async def dropped() -> bool:
        return rounds.parked == 0 and requests.pending == 0

    await async_wait_for(dropped, timeout_s=5, what="the unanswered call dropped")
    assert requests.counts["timeout"] == 1


async def test_a_closed_call_channel_drops_logs_and_ends_its_requests() -> None:
    registry, client = ClientRequests(), Client()
    state = _state("sampling")
    state.log_level = "debug"
    channel = registry.channel(state, client.write)
    waiting = asyncio.create_task(channel.request("sampling/createMessage", {}, 30))
    await client.asked()
    channel.close()
    with pytest.raises(ClientRequestFailed, match="call ended"):
        await waiting
    written = len(client.written)
    await channel.log({"level": "error", "data": "late"})
    with pytest.raises(ClientRequestFailed, match="call ended"):
        await channel.request("sampling/createMessage", {}, 30)
    assert len(client.written) == written
    assert registry.pending == 0 and registry.counts["call_ended"] == 2


async def test_one_caller_has_a_share_of_the_parked_calls() -> None:
    requests = ClientRequests()
    rounds = InputRounds(requests, max_per_caller=2)
    start = _asking_call(requests, 30)
    caps = frozenset({"sampling"})
    for _ in range(2):
        first = await rounds.call("me", {}, None, caps, None, start)
        assert first["resultType"] == "input_required"
    with pytest.raises(RoundsError, match="2 calls of yours"):
        await rounds.call("me", {}, None, caps, None, start)
    other = await rounds.call("other", {}, None, caps, None, start)
    assert other["resultType"] == "input_required"
    await rounds.stop()
