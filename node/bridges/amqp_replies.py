"""The answers to AMQP calls, published together: the replies that are ready in one
iteration of the event loop leave in one write (`amqp_publish.publish_many`), each
waiting for its own publisher confirm (a call is acked only after its answer is
confirmed, `amqp_calls.py`).

One write per answer was ≈8 % of the node's CPU per call (a system call, a lock and a
timeout each); under load many answers are ready at once (64 calls in flight: several
per iteration).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import aiormq

from vsmcp.node.bridges.amqp_publish import BROKER_ERRORS, Outgoing, publish_many
from vsmcp.node.bridges.amqp_tasks import WriteTasks

REPLY_TIMEOUT_S: Final = 30.0
# Answers per write at most (prefetch bounds what is pending anyway).
MAX_BATCH: Final = 1_000

# An answer not written yet, and the future its caller awaits: it gets the broker's
# confirmation future once written.
_Pending = tuple[Outgoing, "asyncio.Future[asyncio.Future[Any]]"]


class Replies:
    def __init__(self, channel: aiormq.Channel) -> None:
        self._channel = channel
        self._pending: list[_Pending] = []
        self._scheduled = False
        self._sending = WriteTasks()
        self.writes = 0  # publish writes (for the status: answers per write)

    async def reply(self, routing_key: str, correlation_id: str | None, body: bytes) -> None:
        """Publish an answer; return once the broker confirmed it. A closed channel, a
        nack or a stalled broker raises (the call stays unacked and comes back)."""
        loop = asyncio.get_running_loop()
        written: asyncio.Future[asyncio.Future[Any]] = loop.create_future()
        self._pending.append((Outgoing(routing_key, body, correlation_id=correlation_id), written))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        async with asyncio.timeout(REPLY_TIMEOUT_S):
            confirmation = await written
            await confirmation

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            self._sending.spawn(self._send(batch), "amqp-replies")

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            confirmations = await publish_many(self._channel, [out for out, _ in batch])
        except BROKER_ERRORS as exc:
            for _, written in batch:
                if not written.done():
                    written.set_exception(exc)
            return
        except asyncio.CancelledError:
            for _, written in batch:
                written.cancel()
            raise
        self.writes += 1
        for (_, written), confirmation in zip(batch, confirmations, strict=True):
            if written.done():  # its caller gave up (cancelled): nobody reads the confirm
                confirmation.add_done_callback(_consume)
            else:
                written.set_result(confirmation)

    async def close(self) -> None:
        await self._sending.close()


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
