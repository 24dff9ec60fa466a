"""MeshCalls: coalesced request/reply between two nodes over an in-memory link.

The link seals nothing (signing is the mesh service's job, tested with real nodes in
tests/integration); it carries each envelope payload to the other side on the next loop
iteration, counting envelopes, as the transport would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import pytest

from tests.polling import async_wait_until
from vsmcp.mesh.envelope import EMPTY_CONTEXT, WIRE_VERSION, Context, Envelope, MsgType
from vsmcp.mesh.transport import (
    MAX_HANDLERS_PER_PEER,
    QueueFullError,
    RemoteError,
    RequestTimeoutError,
    TransportClosedError,
)
from vsmcp.node.routing import calls as mesh_calls
from vsmcp.node.routing.calls import (
    MAX_ITEMS_PER_ENVELOPE,
    CallRefusedError,
    Handler,
    MeshCalls,
    ReplyItem,
)

A, B = "node-a", "node-b"


@dataclass
class Link:
    """Both ends of an in-memory link; `envelopes[(sender, kind)]` counts what was sent."""

    ends: dict[str, MeshCalls] = field(default_factory=dict)
    envelopes: dict[tuple[str, MsgType], int] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)
    accept: bool = True

    def sender(self, me: str) -> Callable[[str, MsgType, bytes], bool]:
        def send(to: str, kind: MsgType, payload: bytes) -> bool:
            if not self.accept:
                return False
            self.envelopes[(me, kind)] = self.envelopes.get((me, kind), 0) + 1
            self.sizes.append(len(payload))
            envelope = Envelope(
                WIRE_VERSION, kind, b"0" * 16, b"k" * 32, None, 1, 0, EMPTY_CONTEXT, payload
            )
            asyncio.get_running_loop().call_soon(self.deliver, me, to, envelope)
            return True

        return send

    def deliver(self, sender: str, to: str, envelope: Envelope) -> None:
        end = self.ends[to]
        if envelope.type == MsgType.CALLS:
            end.on_calls(sender, sender, envelope)
        else:
            end.on_replies(sender, envelope)


def echo_handler(delay_s: float = 0.0) -> Handler:
    async def handle(peer: object, envelope: Envelope) -> tuple[MsgType, bytes]:
        if delay_s:
            await asyncio.sleep(delay_s)
        return MsgType.RESULT, b"re:" + envelope.payload

    return handle


def holding_handler(started: asyncio.Event, cancelled: asyncio.Event) -> Handler:
    """Runs until cancelled; says when it started and when it was cancelled."""

    async def hold(peer: object, envelope: Envelope) -> tuple[MsgType, bytes]:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return MsgType.RESULT, b""

    return hold


def start_call(caller: MeshCalls) -> asyncio.Task[ReplyItem]:
    """An empty INVOKE from `caller` to B, with a minute to run, as a task."""
    return asyncio.create_task(caller.request(B, MsgType.INVOKE, b"", timeout_s=60, context=None))


def pair(
    handlers: dict[MsgType, Handler],
    *,
    max_payload: int = 1 << 20,
    inflight: int = MAX_HANDLERS_PER_PEER,
    **limits: int,
) -> tuple[Link, MeshCalls, MeshCalls]:
    """a calls (at most `inflight` requests at once), b serves (within `limits`)."""
    link = Link()
    a = MeshCalls(link.sender(A), {}, max_payload_bytes=max_payload, max_inflight_per_peer=inflight)
    b = MeshCalls(link.sender(B), handlers, max_payload_bytes=max_payload, **limits)
    link.ends.update({A: a, B: b})
    return link, a, b


async def test_concurrent_requests_share_one_envelope_each_way() -> None:
    link, a, b = pair({MsgType.INVOKE: echo_handler()})
    replies = await asyncio.gather(
        *(
            a.request(B, MsgType.INVOKE, str(i).encode(), timeout_s=5, context=None)
            for i in range(50)
        )
    )
    assert [r.payload for r in replies] == [f"re:{i}".encode() for i in range(50)]
    assert all(r.type == MsgType.RESULT and not r.refusal for r in replies)
    assert link.envelopes == {(A, MsgType.CALLS): 1, (B, MsgType.REPLIES): 1}
    assert (a.counts["requested"], a.counts["calls_envelopes"]) == (50, 1)
    assert (b.counts["served"], b.counts["replies_envelopes"]) == (50, 1)
    await a.stop()
    await b.stop()


async def test_a_slow_call_does_not_hold_up_a_fast_one() -> None:
    gate = asyncio.Event()

    async def handle(peer: object, envelope: Envelope) -> tuple[MsgType, bytes]:
        if envelope.payload == b"slow":
            await gate.wait()
        return MsgType.RESULT, envelope.payload

    _, a, b = pair({MsgType.INVOKE: handle})
    slow = asyncio.create_task(a.request(B, MsgType.INVOKE, b"slow", timeout_s=5, context=None))
    fast = await a.request(B, MsgType.INVOKE, b"fast", timeout_s=5, context=None)
    assert fast.payload == b"fast" and not slow.done()
    gate.set()
    assert (await slow).payload == b"slow"
    await a.stop()
    await b.stop()


async def test_the_context_reaches_the_handler() -> None:
    seen: list[Context] = []

    async def handle(peer: object, envelope: Envelope) -> tuple[MsgType, bytes]:
        seen.append(envelope.context)
        return MsgType.RESULT, b""

    _, a, b = pair({MsgType.INVOKE: handle})
    context = Context(origin="mcp:x", trace_id=b"t" * 16)
    await a.request(B, MsgType.INVOKE, b"", timeout_s=5, context=context)
    assert seen == [context]
    await a.stop()
    await b.stop()


async def test_refusals_reach_the_caller_as_remote_errors() -> None:
    async def boom(peer: object, envelope: Envelope) -> tuple[MsgType, bytes]:
        raise ValueError("bug in a handler")

    _, a, b = pair({MsgType.INVOKE: boom})
    with pytest.raises(CallRefusedError) as raised:
        await a.request(B, MsgType.INVOKE, b"", timeout_s=5, context=None)
    assert isinstance(raised.value, RemoteError) and raised.value.reason == "handler_error"
    with pytest.raises(RemoteError) as raised:
        await a.request(B, MsgType.SYNC, b"", timeout_s=5, context=None)
    assert raised.value.reason == "no_handler"
    await a.stop()
    await b.stop()


async def test_beyond_the_handler_limit_requests_are_refused_busy() -> None:
    gate = asyncio.Event()

    async def hold(peer: object, envelope: Envelope) -> tuple[MsgType, bytes]:
        await gate.wait()
        return MsgType.RESULT, b"done"

    _, a, b = pair({MsgType.INVOKE: hold}, max_handlers_per_peer=3)
    calls = [
        asyncio.create_task(a.request(B, MsgType.INVOKE, b"", timeout_s=5, context=None))
        for _ in range(5)
    ]
    await async_wait_until(lambda: sum(c.done() for c in calls) == 2, what="two refused")
    gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, RemoteError)]
    assert len(refused) == 2 and all(r.reason == "busy" for r in refused)
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 3
    assert b.counts["busy"] == 2
    await a.stop()
    await b.stop()


async def test_beyond_the_in_flight_window_requests_wait_for_a_slot() -> None:
    gate = asyncio.Event()
    running = 0
    most = 0

    async def hold(peer: object, envelope: Envelope) -> tuple[MsgType, bytes]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        running -= 1
        return MsgType.RESULT, envelope.payload

    _, a, b = pair({MsgType.INVOKE: hold}, inflight=3)
    calls = [
        asyncio.create_task(a.request(B, MsgType.INVOKE, bytes([i]), timeout_s=5, context=None))
        for i in range(8)
    ]
    await async_wait_until(lambda: running == 3, what="three handlers running")
    assert a.counts["queued"] == 5 and b.counts["served"] == 3
    gate.set()
    replies = await asyncio.gather(*calls)
    assert [r.payload for r in replies] == [bytes([i]) for i in range(8)]  # none refused
    assert most == 3 and b.counts["busy"] == 0
    assert a._windows == {}  # nothing left behind once all ended
    await a.stop()
    await b.stop()


async def test_a_request_waiting_for_a_slot_times_out_or_is_cancelled_cleanly() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()
    _, a, b = pair({MsgType.INVOKE: holding_handler(started, cancelled)}, inflight=1)
    first = start_call(a)
    await asyncio.wait_for(started.wait(), 5)
    with pytest.raises(RequestTimeoutError, match="no slot"):
        await a.request(B, MsgType.INVOKE, b"", timeout_s=0.05, context=None)
    waiting = start_call(a)
    await async_wait_until(lambda: a.counts["queued"] == 2, what="the second waiter queued")
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert len(a._windows[B].waiters) == 0 and a._windows[B].inflight == 1
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert a._windows == {}
    # Stopping fails a request still waiting for a slot.
    blocker = start_call(a)
    queued = start_call(a)
    await async_wait_until(lambda: a.counts["queued"] == 3, what="a third waiter queued")
    await a.stop()
    for call in (blocker, queued):
        with pytest.raises(TransportClosedError):
            await call
    await b.stop()


async def test_a_cancelled_call_cancels_the_handler_on_the_peer() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()
    hold = holding_handler(started, cancelled)
    _, a, b = pair({MsgType.INVOKE: hold})
    call = start_call(a)
    await asyncio.wait_for(started.wait(), 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(cancelled.wait(), 5)
    await a.stop()
    await b.stop()


async def test_a_timeout_raises_and_cancels_the_handler() -> None:
    cancelled = asyncio.Event()
    hold = holding_handler(asyncio.Event(), cancelled)
    _, a, b = pair({MsgType.INVOKE: hold})
    with pytest.raises(RequestTimeoutError):
        await a.request(B, MsgType.INVOKE, b"", timeout_s=0.05, context=None)
    await asyncio.wait_for(cancelled.wait(), 5)
    await a.stop()
    await b.stop()


async def test_an_envelope_that_cannot_be_queued_fails_its_calls_at_once() -> None:
    link, a, b = pair({MsgType.INVOKE: echo_handler()})
    link.accept = False
    with pytest.raises(QueueFullError):
        await a.request(B, MsgType.INVOKE, b"", timeout_s=60, context=None)
    assert a.counts["unsent"] == 1
    await a.stop()
    await b.stop()


async def test_batches_respect_the_size_and_item_caps() -> None:
    link, a, b = pair({MsgType.INVOKE: echo_handler()}, max_payload=10_000)
    payloads = [bytes([i % 256]) * 3_000 for i in range(10)]
    replies = await asyncio.gather(
        *(a.request(B, MsgType.INVOKE, p, timeout_s=5, context=None) for p in payloads)
    )
    assert [r.payload for r in replies] == [b"re:" + p for p in payloads]
    assert link.envelopes[(A, MsgType.CALLS)] >= 4
    assert max(link.sizes) <= 10_000 + 64

    link2, c, d = pair(
        {MsgType.INVOKE: echo_handler()},
        inflight=2_000,
        max_handlers=2_000,
        max_handlers_per_peer=2_000,
    )
    n = MAX_ITEMS_PER_ENVELOPE + 10
    await asyncio.gather(
        *(c.request(B, MsgType.INVOKE, b"", timeout_s=5, context=None) for _ in range(n))
    )
    assert link2.envelopes[(A, MsgType.CALLS)] == 2
    for end in (a, b, c, d):
        await end.stop()


async def test_malformed_late_and_foreign_replies_are_counted_and_ignored() -> None:
    _, a, b = pair({MsgType.INVOKE: echo_handler(delay_s=0.01)})
    garbage = Envelope(
        WIRE_VERSION, MsgType.REPLIES, b"0" * 16, b"k" * 32, None, 1, 0, EMPTY_CONTEXT, b"\xc1"
    )
    a.on_replies(B, garbage)
    b.on_calls(
        A,
        A,
        Envelope(
            WIRE_VERSION, MsgType.CALLS, b"0" * 16, b"k" * 32, None, 1, 0, EMPTY_CONTEXT, b"\x93"
        ),
    )
    assert a.counts["malformed"] == 1 and b.counts["malformed"] == 1

    call = asyncio.create_task(a.request(B, MsgType.INVOKE, b"x", timeout_s=5, context=None))
    await asyncio.sleep(0)  # let the call register its ref (one loop turn, no waiting)
    # Another peer answers our ref first: ignored; the real answer still arrives.
    forged = msgspec.msgpack.encode([[int(MsgType.RESULT), 1, b"forged", ""]])
    a.on_replies(
        "node-c",
        Envelope(
            WIRE_VERSION, MsgType.REPLIES, b"0" * 16, b"k" * 32, None, 1, 0, EMPTY_CONTEXT, forged
        ),
    )
    assert (await call).payload == b"re:x"
    assert a.counts["foreign_reply"] == 1
    a.on_replies(
        B,
        Envelope(
            WIRE_VERSION, MsgType.REPLIES, b"0" * 16, b"k" * 32, None, 1, 0, EMPTY_CONTEXT, forged
        ),
    )
    assert a.counts["late_reply"] == 1
    await a.stop()
    await b.stop()


async def test_stop_fails_waiting_calls_and_cancels_handlers() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()
    hold = holding_handler(started, cancelled)
    _, a, b = pair({MsgType.INVOKE: hold})
    call = start_call(a)
    await asyncio.wait_for(started.wait(), 5)
    await b.stop()
    assert cancelled.is_set()
    await a.stop()
    with pytest.raises(TransportClosedError):
        await call
    with pytest.raises(TransportClosedError):
        await a.request(B, MsgType.INVOKE, b"", timeout_s=1, context=None)
    await a.stop()  # idempotent


async def test_stop_right_after_a_slot_was_handed_over_fails_the_request_at_once() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()
    _, a, b = pair({MsgType.INVOKE: holding_handler(started, cancelled)}, inflight=1)
    first = start_call(a)
    await asyncio.wait_for(started.wait(), 5)
    second = start_call(a)
    await async_wait_until(lambda: a.counts["queued"] == 1, what="the second request waiting")
    first.cancel()
    await asyncio.sleep(0)  # first ends and hands its slot over; second has not run yet
    assert first.done()
    await a.stop()
    with pytest.raises(TransportClosedError):
        await asyncio.wait_for(second, 5)
    await b.stop()


async def test_beyond_max_waiting_requests_are_refused_busy_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mesh_calls, "MAX_WAITING_PER_PEER", 2)
    started, cancelled = asyncio.Event(), asyncio.Event()
    _, a, b = pair({MsgType.INVOKE: holding_handler(started, cancelled)}, inflight=1)
    calls = [start_call(a) for _ in range(3)]
    await asyncio.wait_for(started.wait(), 5)
    with pytest.raises(CallRefusedError) as refused:
        await a.request(B, MsgType.INVOKE, b"", timeout_s=60, context=None)
    assert refused.value.reason == "busy" and a.counts["busy"] == 1
    await a.stop()
    await asyncio.gather(*calls, return_exceptions=True)
    await b.stop()
