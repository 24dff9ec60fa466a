"""The answers to AMQP calls, published together: the replies that are ready in one
iteration of the event loop leave in one write (`amqp_publish.publish_many`). The
broker's confirm of each answer calls its `on_confirm`, which acks the call it answers
(a call is acked only after its answer is confirmed, `amqp_bridge.py`).

One write per answer was ≈8 % of the node's CPU per call (a system call, a lock and a
timeout each); under load many answers are ready at once (64 calls in flight: several
per iteration). Nothing waits for a confirm (no future, timeout or task per answer): an
answer never confirmed (its channel gone) leaves its call unacked until the connection
ends and the broker redelivers it (answered again from memory). An answer the broker
refuses (`basic.nack`, the caller's reply queue full) still settles its call: the
bridge acks it and counts it (`answers_refused`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

import aiormq
import aiormq.exceptions

from vsmcp.node.bridges.amqp_publish import BROKER_ERRORS, Outgoing, publish_many
from vsmcp.node.bridges.amqp_tasks import WriteTasks

# Answers per write at most (prefetch bounds what is pending anyway).
MAX_BATCH: Final = 1_000

# `on_confirm(error)`: the answer was confirmed (None), or could not be published or was
# refused. Called from aiormq's channel reader: it must not raise.
OnAnswerConfirm = Callable[[BaseException | None], None]


class Replies:
    def __init__(self, channel: aiormq.Channel) -> None:
        self._channel = channel
        self._pending: list[tuple[Outgoing, OnAnswerConfirm]] = []
        self._scheduled = False
        self._sending = WriteTasks()
        self.writes = 0  # publish writes (for the status: answers per write)

    def reply(
        self, routing_key: str, correlation_id: str | None, body: bytes, on_confirm: OnAnswerConfirm
    ) -> None:
        """Publish an answer (with the others ready now); `on_confirm` tells how it went.
        An answer still unwritten when the connection ends is dropped with it: its call
        is redelivered."""
        self._pending.append(
            (Outgoing(routing_key, body, correlation_id=correlation_id), on_confirm)
        )
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            if not self._sending.spawn(self._send(batch), "amqp-replies"):
                # Closed: the channel is gone; unacked, the calls come back.
                gone = aiormq.exceptions.ChannelInvalidStateError("replies closed")
                for _, on_confirm in batch:
                    on_confirm(gone)

    async def _send(self, batch: list[tuple[Outgoing, OnAnswerConfirm]]) -> None:
        callbacks = [on_confirm for _, on_confirm in batch]

        def confirmed(index: int, error: BaseException | None) -> None:
            callbacks[index](error)

        try:
            await publish_many(self._channel, [out for out, _ in batch], confirmed)
        except BROKER_ERRORS as exc:
            for on_confirm in callbacks:
                on_confirm(exc)
            return
        self.writes += 1

    async def close(self) -> None:
        await self._sending.close()
