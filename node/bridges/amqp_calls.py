"""Tool calls arriving over AMQP: one JSON-RPC request per message, answered to its
`reply_to` with its `correlation_id`, acked only once the broker confirmed (or refused)
the answer (the acks of many go in one frame: `amqp_acks.py`).

What a message gets (never a crash, never a redelivery loop):
- no `reply_to`: nobody can be answered, so it is not run; it is rejected without
  requeue, which dead-letters it (the queues name `vsmcp.dead` as their dead-letter
  exchange);
- oversized, not JSON, not a JSON-RPC request, an unknown tool, a zone the mapping does
  not grant, any failure of the call: a JSON-RPC error answer (the codes of
  `node/mcp/protocol.py`), then ack;
- a redelivery of a message already answered (the broker redelivers what was not acked
  when a connection drops or its node restarts; recognised by message id, body, user id
  and queue): the remembered answer is sent again, the tool is not run again; one still
  running is awaited, not started twice (a call runs in a task of its own, so a dropped
  connection does not cancel it). An answer is remembered in the node's SQLite store
  before it is published (`amqp_answers.py`: batched, bounded, and which crash window
  runs a call twice), so a restart of the node forgets nothing it answered. A call can
  still run twice: on the shared `vsmcp.calls` queue a redelivery may go to another
  node, which has not seen it and runs it; a crash after the tool ran and before its
  answer was committed; a redelivery after the answer was evicted (`REMEMBERED_ANSWERS`
  newer ones, `REMEMBERED_BYTES`, `REMEMBER_FOR_S`). Run once holds on the pinned queue,
  within those bounds.

The caller's zone: `user_zones[user_id]` (RabbitMQ refuses a `user_id` property that is
not the connection's user, so it is authenticated), else `queue_zones[queue]`, else
`default_zone` (the lowest zone unless configured).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from vsmcp.node.bridges.amqp_answers import RememberedAnswers
from vsmcp.node.mcp.protocol import (
    INVALID_REQUEST,
    TOO_LARGE,
    Caller,
    McpCore,
    McpError,
    decode,
    encode,
    error_message,
    result_message,
)
from vsmcp.node.tools.errors import ToolError

log = logging.getLogger(__name__)

MAX_ID_CHARS: Final = 256


@dataclass(frozen=True, slots=True)
class CallMessage:
    """What a call message carries that answering it needs (its AMQP properties)."""

    body: bytes
    reply_to: str | None
    message_id: str | None
    user_id: str | None
    correlation_id: str | None


@dataclass(frozen=True, slots=True)
class ZoneMap:
    default: str
    users: Mapping[str, str] = field(default_factory=dict)
    queues: Mapping[str, str] = field(default_factory=dict)

    def zone_of(self, user_id: str | None, queue: str) -> str:
        if user_id and user_id in self.users:
            return self.users[user_id]
        return self.queues.get(queue, self.default)


@dataclass
class CallCounters:
    received: int = 0
    answered: int = 0
    errors_answered: int = 0
    duplicates: int = 0
    dead_lettered: int = 0

    def view(self) -> dict[str, int]:
        return {
            "calls_received": self.received,
            "calls_answered": self.answered,
            "calls_error_answers": self.errors_answered,
            "calls_duplicates": self.duplicates,
            "calls_dead_lettered": self.dead_lettered,
        }


class CallServer:
    """Answers the call messages of every queue the bridge consumes."""

    def __init__(self, catalog: Any, zones: ZoneMap, max_message_bytes: int) -> None:
        self._core = McpCore(catalog)
        self._zones = zones
        self._max_bytes = max_message_bytes
        self.counters = CallCounters()
        self._answers = RememberedAnswers(None)
        self._running: dict[str, asyncio.Task[bytes]] = {}

    async def open(self, store: Any) -> None:
        """Remember answers in `store` (and what it remembers from before a restart)."""
        self._answers = await RememberedAnswers.open(store)

    @property
    def answers(self) -> RememberedAnswers:
        return self._answers

    async def serve(self, message: CallMessage, queue: str) -> bytes | None:
        """The answer to one message, to publish to its `reply_to` (and ack the message
        once confirmed); None if it cannot be answered (no `reply_to`: reject it without
        requeue, it is dead-lettered)."""
        self.counters.received += 1
        if not message.reply_to:
            self.counters.dead_lettered += 1
            log.warning("AMQP call on %s without reply_to dead-lettered", queue)
            return None
        message_id = message.message_id
        if message_id:
            # A redelivery is the same id, body, user and queue: an id alone would hand
            # one caller's answer to another who reused it (and their zones may differ).
            # One hash over the encoded tuple: fields joined by a separator are ambiguous
            # (an id holding the separator would pose as another caller's id and user).
            identity = (message_id[:MAX_ID_CHARS], message.user_id, queue)
            hashed = hashlib.sha256(msgspec.json.encode(identity))
            hashed.update(message.body)
            key = hashed.hexdigest()
            return await self._answer_once(key, message, queue)
        return await self._answer(message.body, message.user_id, queue)

    async def _answer_once(self, key: str, message: CallMessage, queue: str) -> bytes:
        # The running call first: its answer is in memory before it is committed, and a
        # duplicate must not be answered (and acked) before the commit.
        running = self._running.get(key)
        if running is not None:
            self.counters.duplicates += 1
        else:
            known = self._answers.get(key)
            if known is not None:
                self.counters.duplicates += 1
                return known
            # The call is a task of its own, not of the delivery: when the connection
            # drops (and aio-pika cancels the delivery's task), the call goes on and its
            # answer waits for the redelivery.
            running = asyncio.create_task(
                self._answer_remembered(key, message, queue), name="amqp-call"
            )
            self._running[key] = running
            running.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(running)

    async def _answer_remembered(self, key: str, message: CallMessage, queue: str) -> bytes:
        """The answer, once it is remembered (on disk): an answer sent is never
        forgotten by a restart."""
        body = await self._answer(message.body, message.user_id, queue)
        await self._answers.remember(key, body)
        return body

    async def close(self) -> None:
        """Cancel the calls still running (the bridge stops; unacked, they come back)."""
        running = list(self._running.values())
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
        await self._answers.close()

    async def _answer(self, body: bytes, user_id: str | None, queue: str) -> bytes:
        """The JSON-RPC answer to one message body (never raises but CancelledError)."""
        if len(body) > self._max_bytes:
            return self._error(
                None,
                McpError(
                    TOO_LARGE,
                    f"Request too large: {len(body)} bytes, at most {self._max_bytes}",
                    {"max_bytes": self._max_bytes},
                ),
            )
        try:
            request = decode(body)
        except McpError as exc:
            return self._error(None, exc)
        if not request.is_request:
            error = McpError(INVALID_REQUEST, "Invalid request: expected a request with an id")
            return self._error(request.id, error)
        zone = self._zones.zone_of(user_id, queue)
        who = f"amqp:{user_id}" if user_id else f"amqp:{queue}"
        caller = Caller(caller_id=who, zone=zone, origin=who)
        try:
            result = await self._core.handle(request, caller, modern=False)
        except (McpError, ToolError) as exc:
            return self._error(request.id, exc)
        except Exception as exc:  # top-level handler of one call: answer, go on
            log.exception("AMQP call %r failed", request.method)
            return self._error(request.id, exc)
        self.counters.answered += 1
        return encode(result_message(request.id, result))

    def _error(self, request_id: Any, exc: BaseException) -> bytes:
        self.counters.errors_answered += 1
        return encode(error_message(request_id, exc))
