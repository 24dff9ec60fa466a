"""Requests between peers, coalesced: many requests (or replies) per signed envelope.

A request to a peer is an item in a CALLS envelope; its answer is an item in a REPLIES
envelope the peer sends back, matched by the caller's `ref`. Both directions travel
one-way, in the transport's REQUEST class. Items queued for the same peer while the
event loop runs one iteration leave together, in as few envelopes as the size cap allows:
under concurrent load one Ed25519 signature, one verification and one ZeroMQ frame
serve many calls, and a lone call leaves at once (no timer, no added latency). A slow
call never holds up a fast one: every reply leaves as soon as its handler returns.

Wire (msgpack, inside the signed envelope; append-only like the envelope tags)::

    CALLS   payload: [item, ...]   item = [type, ref, context, payload]
    REPLIES payload: [item, ...]   item = [type, ref, payload, refusal]

`type` is the MsgType of the request (INVOKE, ...) or of the answer (RESULT, ERROR);
CANCEL with the ref of a running request stops its handler (the caller gave up).
`refusal` is empty for an answer, or the reason the peer did not run the request:
"no_handler", "busy" (handler limits reached) or "handler_error" (it raised). The
caller sees a refusal as `mesh.transport.RemoteError(refusal)`, as for a transport
request, so routing treats both paths alike.

Every batch is size-capped by the envelope and item-capped here; handler tasks are
bounded in all and per peer; each task and each waiting call is owned by `MeshCalls`
and ends with it.

Flow control: a caller keeps at most `max_inflight_per_peer` requests in flight to one
peer (by default the peer's own per-peer handler limit), and further requests wait for
a slot, first come first served, within their timeout. So one busy entry node queues
its calls to a provider instead of having them refused "busy"; "busy" remains the
provider's answer when many callers together exceed its total limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta

from vsmcp.mesh.envelope import EMPTY_CONTEXT, Context, Envelope, MsgType
from vsmcp.mesh.transport import (
    MAX_CONCURRENT_HANDLERS,
    MAX_HANDLERS_PER_PEER,
    QueueFullError,
    RemoteError,
    RequestTimeoutError,
    TransportClosedError,
)

log = logging.getLogger(__name__)

MAX_ITEMS_PER_ENVELOPE: Final = 1024
# Requests waiting for a slot to one peer; beyond this they are refused "busy" at once.
MAX_WAITING_PER_PEER: Final = 1024
MAX_REFUSAL_CHARS: Final = 64
# Per item beyond its payload: msgpack framing, the ref, a refusal and a small context.
ITEM_OVERHEAD_BYTES: Final = 1024

# What `MeshCalls.counts` counts (the labels of vsmcp_mesh_calls_total).
COUNTED_EVENTS: Final = (
    "requested",  # requests this node sent
    "served",  # requests from peers this node ran
    "calls_envelopes",  # CALLS envelopes sent (requested / this = calls per envelope)
    "replies_envelopes",  # REPLIES envelopes sent
    "busy",  # refused: handler limits reached there, or too many waiting here
    "handler_error",  # a handler raised
    "unsent",  # items whose envelope could not be queued
    "late_reply",  # answers to calls that had timed out or were cancelled
    "foreign_reply",  # answers from a peer the call did not go to
    "duplicate_ref",  # a ref reused while its request still ran
    "malformed",  # undecodable CALLS or REPLIES payloads
    "queued",  # requests that waited for a slot (max_inflight_per_peer in flight)
)

_Ref = Annotated[int, Meta(ge=0)]


class CallItem(msgspec.Struct, array_like=True, frozen=True):
    type: MsgType
    ref: _Ref
    context: Context
    payload: bytes


class ReplyItem(msgspec.Struct, array_like=True, frozen=True):
    """A peer's answer to one request: what `MeshService.request` returns."""

    type: MsgType
    ref: _Ref
    payload: bytes
    refusal: Annotated[str, Meta(max_length=MAX_REFUSAL_CHARS)] = ""


_Calls = Annotated[list[CallItem], Meta(max_length=MAX_ITEMS_PER_ENVELOPE)]
_Replies = Annotated[list[ReplyItem], Meta(max_length=MAX_ITEMS_PER_ENVELOPE)]
_encode = msgspec.msgpack.Encoder().encode
_decode_calls = msgspec.msgpack.Decoder(_Calls).decode
_decode_replies = msgspec.msgpack.Decoder(_Replies).decode

SendOneway = Callable[[str, MsgType, bytes], bool]
"""`(node_id, kind, payload) -> queued?`: seal and send one envelope to a peer."""
Handler = Callable[[Any, Envelope], Awaitable[tuple[MsgType, bytes]]]
"""`(peer, request envelope) -> (answer kind, payload)`."""


class CallRefusedError(RemoteError):
    """The peer did not run the request (the reason is `reason`)."""


@dataclass(slots=True)
class _Waiting:
    node_id: str
    future: asyncio.Future[ReplyItem]


@dataclass(slots=True)
class _Window:
    """Requests in flight to one peer, and the requests waiting for a slot."""

    inflight: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class MeshCalls:
    """The request/reply multiplexer of one node. `stop()` ends every call and handler."""

    def __init__(
        self,
        send: SendOneway,
        handlers: dict[MsgType, Handler],
        *,
        max_payload_bytes: int,
        max_handlers: int = MAX_CONCURRENT_HANDLERS,
        max_handlers_per_peer: int = MAX_HANDLERS_PER_PEER,
        max_inflight_per_peer: int = MAX_HANDLERS_PER_PEER,
    ) -> None:
        self._send = send
        self._handlers = handlers
        self._max_payload = max_payload_bytes
        self._max_handlers = max_handlers
        if max_inflight_per_peer < 1:
            raise ValueError("max_inflight_per_peer must be at least 1")
        self._max_per_peer = max_handlers_per_peer
        self._max_inflight = max_inflight_per_peer
        self._windows: dict[str, _Window] = {}
        self._refs = itertools.count(1)
        self._waiting: dict[int, _Waiting] = {}
        self._serving: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._serving_per_peer: Counter[str] = Counter()
        # Encoded items (with their refs) waiting for the loop to come round, per peer and kind.
        self._outboxes: dict[tuple[str, MsgType], list[tuple[int, bytes]]] = {}
        self._stopped = False
        self.counts: Counter[str] = Counter()

    # -- caller side -----------------------------------------------------------------------

    async def request(
        self,
        node_id: str,
        kind: MsgType,
        payload: bytes,
        *,
        timeout_s: float,
        context: Context | None,
    ) -> ReplyItem:
        """Send a request item to `node_id`; return its reply item.

        Raises RequestTimeoutError, CallRefusedError (the peer refused),
        QueueFullError (the envelope could not be queued) or TransportClosedError.
        """
        if self._stopped:
            raise TransportClosedError("mesh calls stopped")
        loop = asyncio.get_running_loop()
        window = self._windows.get(node_id)
        if window is None:
            window = self._windows[node_id] = _Window()
        if window.inflight >= self._max_inflight:
            started = loop.time()
            await self._wait_for_slot(window, node_id, timeout_s)
            timeout_s -= loop.time() - started
        else:
            window.inflight += 1
        try:
            if self._stopped:  # stopped while this request was handed its slot
                raise TransportClosedError("mesh calls stopped")
            if timeout_s <= 0:
                raise RequestTimeoutError(f"no slot for a request to {node_id} in time")
            reply = await self._call(node_id, kind, payload, timeout_s, context)
        finally:
            self._release(node_id, window)
        if reply.refusal:
            raise CallRefusedError(reply.refusal)
        return reply

    async def _call(
        self, node_id: str, kind: MsgType, payload: bytes, timeout_s: float, ctx: Context | None
    ) -> ReplyItem:
        """One request item to `node_id` (its slot taken) and its reply item."""
        ref = next(self._refs)
        self.counts["requested"] += 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ReplyItem] = loop.create_future()
        self._waiting[ref] = _Waiting(node_id, future)
        item = CallItem(kind, ref, EMPTY_CONTEXT if ctx is None else ctx, payload)
        self._queue(node_id, MsgType.CALLS, ref, _encode(item))
        # A timer on the future, not an asyncio.timeout scope: half the cost per call.
        timer = loop.call_later(timeout_s, _expire, future, node_id, timeout_s)
        answered = False
        try:
            reply = await future
            answered = True
        finally:
            timer.cancel()
            del self._waiting[ref]
            # Not sent, or transport closed: nothing runs there to cancel.
            unsent = (
                future.done()
                and not future.cancelled()
                and not isinstance(future.exception(), RequestTimeoutError)
            )
            if not answered and not unsent and not self._stopped:
                # The caller gave up (timeout or cancellation): stop the handler there.
                cancel = CallItem(MsgType.CANCEL, ref, EMPTY_CONTEXT, b"")
                self._queue(node_id, MsgType.CALLS, ref, _encode(cancel))
        return reply

    async def _wait_for_slot(self, window: _Window, node_id: str, timeout_s: float) -> None:
        """Wait until a finishing request hands this one its slot (counted in flight)."""
        if len(window.waiters) >= MAX_WAITING_PER_PEER:
            self.counts["busy"] += 1
            raise CallRefusedError("busy", f"{MAX_WAITING_PER_PEER} requests already waiting")
        self.counts["queued"] += 1
        loop = asyncio.get_running_loop()
        slot: asyncio.Future[None] = loop.create_future()
        window.waiters.append(slot)
        timer = loop.call_later(timeout_s, _expire_wait, slot, node_id, timeout_s)
        try:
            await slot
        except BaseException:
            if slot.done() and not slot.cancelled() and slot.exception() is None:
                self._release(node_id, window)  # handed a slot while leaving: pass it on
            else:
                with contextlib.suppress(ValueError):
                    window.waiters.remove(slot)
            raise
        finally:
            timer.cancel()

    def _release(self, node_id: str, window: _Window) -> None:
        """A request to `node_id` ended: hand its slot to the first waiter, if any."""
        while window.waiters:
            slot = window.waiters.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        window.inflight -= 1
        if window.inflight <= 0 and self._windows.get(node_id) is window:
            del self._windows[node_id]

    def on_replies(self, node_id: str, envelope: Envelope) -> None:
        """A REPLIES envelope from `node_id` (opened and admitted by the caller)."""
        try:
            replies = _decode_replies(envelope.payload)
        except msgspec.DecodeError:
            self.counts["malformed"] += 1
            return
        for reply in replies:
            waiting = self._waiting.get(reply.ref)
            if waiting is None or waiting.future.done():
                self.counts["late_reply"] += 1  # timed out, cancelled, or a duplicate
            elif waiting.node_id != node_id:
                self.counts["foreign_reply"] += 1  # a peer cannot answer another's call
            else:
                waiting.future.set_result(reply)

    # -- serving side ----------------------------------------------------------------------

    def on_calls(self, peer: Any, node_id: str, envelope: Envelope) -> None:
        """A CALLS envelope from the admitted `peer` (whose id is `node_id`)."""
        try:
            items = _decode_calls(envelope.payload)
        except msgspec.DecodeError:
            self.counts["malformed"] += 1
            return
        for item in items:
            if item.type == MsgType.CANCEL:
                task = self._serving.get((node_id, item.ref))
                if task is not None:
                    task.cancel()
                continue
            self._start(peer, node_id, envelope, item)

    def _start(self, peer: Any, node_id: str, envelope: Envelope, item: CallItem) -> None:
        key = (node_id, item.ref)
        handler = self._handlers.get(item.type)
        if handler is None:
            self._refuse(node_id, item, "no_handler")
            return
        if key in self._serving:
            self.counts["duplicate_ref"] += 1  # a ref reused while still running
            return
        if (
            len(self._serving) >= self._max_handlers
            or self._serving_per_peer[node_id] >= self._max_per_peer
        ):
            self.counts["busy"] += 1
            self._refuse(node_id, item, "busy")
            return
        request = Envelope(
            envelope.version,
            item.type,
            envelope.msg_id,
            envelope.sender,
            envelope.recipient,
            envelope.seq,
            envelope.ts_ms,
            item.context,
            item.payload,
        )
        self.counts["served"] += 1
        task = asyncio.create_task(
            self._serve(handler, peer, node_id, request, item.ref), name=f"mesh-call-{item.ref}"
        )
        self._serving[key] = task
        self._serving_per_peer[node_id] += 1
        task.add_done_callback(lambda _t: self._served(key))

    def _served(self, key: tuple[str, int]) -> None:
        del self._serving[key]
        node_id = key[0]
        self._serving_per_peer[node_id] -= 1
        if self._serving_per_peer[node_id] <= 0:
            del self._serving_per_peer[node_id]

    async def _serve(
        self, handler: Handler, peer: Any, node_id: str, request: Envelope, ref: int
    ) -> None:
        try:
            kind, payload = await handler(peer, request)
        except asyncio.CancelledError:
            raise  # the caller cancelled (no reply wanted) or we are stopping
        except Exception as exc:  # top level of one request's task
            self.counts["handler_error"] += 1
            log.warning("mesh %s handler failed: %r", request.type.name, exc, exc_info=True)
            self._reply(node_id, ReplyItem(request.type, ref, b"", "handler_error"))
            return
        self._reply(node_id, ReplyItem(kind, ref, payload))

    def _refuse(self, node_id: str, item: CallItem, reason: str) -> None:
        self._reply(node_id, ReplyItem(item.type, item.ref, b"", reason))

    def _reply(self, node_id: str, reply: ReplyItem) -> None:
        if not self._stopped:
            self._queue(node_id, MsgType.REPLIES, reply.ref, _encode(reply))

    # -- coalescing ------------------------------------------------------------------------

    def _queue(self, node_id: str, kind: MsgType, ref: int, item: bytes) -> None:
        key = (node_id, kind)
        outbox = self._outboxes.get(key)
        if outbox is None:
            self._outboxes[key] = [(ref, item)]
            # Everything queued for this peer before the loop comes round leaves together.
            asyncio.get_running_loop().call_soon(self._flush, key)
        else:
            outbox.append((ref, item))

    def _flush(self, key: tuple[str, MsgType]) -> None:
        outbox = self._outboxes.pop(key, None)
        if outbox is None or self._stopped:
            return
        node_id, kind = key
        for chunk in self._chunks(outbox):
            payload = _encode([msgspec.Raw(item) for _, item in chunk])
            self.counts["calls_envelopes" if kind == MsgType.CALLS else "replies_envelopes"] += 1
            if not self._send(node_id, kind, payload):
                self.counts["unsent"] += len(chunk)
                if kind == MsgType.CALLS:
                    self._fail_unsent(node_id, [ref for ref, _ in chunk])

    def _fail_unsent(self, node_id: str, refs: list[int]) -> None:
        # Like a transport queue drop: routing fails over to another provider.
        for ref in refs:
            waiting = self._waiting.get(ref)
            if waiting is not None and not waiting.future.done():
                waiting.future.set_exception(
                    QueueFullError(f"could not queue the request to {node_id}")
                )

    def _chunks(self, items: list[tuple[int, bytes]]) -> list[list[tuple[int, bytes]]]:
        chunks: list[list[tuple[int, bytes]]] = []
        current: list[tuple[int, bytes]] = []
        size = 0
        for ref, item in items:
            if current and (
                size + len(item) > self._max_payload or len(current) >= MAX_ITEMS_PER_ENVELOPE
            ):
                chunks.append(current)
                current, size = [], 0
            current.append((ref, item))
            size += len(item) + 8
        if current:
            chunks.append(current)
        return chunks

    # -- lifecycle -------------------------------------------------------------------------

    async def stop(self) -> None:
        """Fail every waiting call, cancel every running handler. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for waiting in self._waiting.values():
            if not waiting.future.done():
                waiting.future.set_exception(TransportClosedError("mesh calls stopped"))
        for window in self._windows.values():
            for slot in window.waiters:
                if not slot.done():
                    slot.set_exception(TransportClosedError("mesh calls stopped"))
        tasks = list(self._serving.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._outboxes.clear()


def _expire_wait(slot: asyncio.Future[None], node_id: str, timeout_s: float) -> None:
    if not slot.done():
        slot.set_exception(
            RequestTimeoutError(f"no slot for a request to {node_id} within {timeout_s:g} s")
        )


def _expire(future: asyncio.Future[ReplyItem], node_id: str, timeout_s: float) -> None:
    if not future.done():
        future.set_exception(RequestTimeoutError(f"no reply from {node_id} within {timeout_s:g} s"))
