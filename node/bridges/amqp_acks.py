"""Acknowledging the deliveries of one channel, many with one frame where it can.

Each ack is a frame, and aiormq writes every frame with a system call of its own: on a
busy 2-core machine an ack per call costs ≈40–250 µs (docs/benchmarks.md, "AMQP
bridge"). So a settled delivery is not acked at once; at the end of the event loop's
iteration, the longest run of settled deliveries from the oldest unacked one is acked
with one `multiple=True` frame, and the settled ones behind a delivery still running are
acked one by one (a slow call must not hold them: they would hold prefetch slots); the
frames of one iteration leave in one write, written by one task in the order they were
decided (frames waiting while the channel's write queue is full join the next write).

A `multiple` ack covers every outstanding tag up to it, so it is sent only over tags
this object has seen, consecutive from the last one it acked: a tag it has not seen yet
(a delivery whose task has not started) ends the run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

import aiormq
from aiormq.abc import ChannelFrame
from pamqp import commands as spec

from vsmcp.node.bridges.amqp_tasks import WriteTasks

log = logging.getLogger(__name__)

_RUNNING: Final = 0
_ACK: Final = 1
_SETTLED_ELSEWHERE: Final = 2  # rejected (dead-lettered) by its handler: never acked here


class Acks:
    def __init__(self, channel: aiormq.Channel, on_error: Callable[[BaseException], None]) -> None:
        self._channel = channel
        self._on_error = on_error
        # Delivery tag -> state, oldest first (tags arrive increasing).
        self._pending: dict[int, int] = {}
        self._acked_through = 0  # every tag up to this one is settled
        # Tags above `_acked_through` settled one by one (acked or rejected).
        self._settled_beyond: set[int] = set()
        self._scheduled = False
        # Frames of flushes not yet written, oldest first, and whether the one writer
        # runs: the frames must reach the channel in the order they were decided (a
        # `multiple` ack written before an earlier single ack of a tag it covers is an
        # unknown tag to the broker, which closes the channel). A task per flush could
        # reorder them while the write queue is full (asyncio.Queue wakes a waiting
        # putter after a newcomer that finds room).
        self._unsent: list[tuple[int, bool]] = []
        self._writing = False
        self._sending = WriteTasks()
        self.frames = 0  # ack frames sent (for the status: acks per frame)

    def track(self, tag: int) -> None:
        self._pending[tag] = _RUNNING

    def ack(self, tag: int) -> None:
        """The delivery is answered: ack it (with others, soon)."""
        self._settle(tag, _ACK)

    def settled_elsewhere(self, tag: int) -> None:
        """The delivery was rejected by its handler: only stop waiting for it."""
        self._settle(tag, _SETTLED_ELSEWHERE)

    def forget(self, tag: int) -> None:
        """The delivery will not be settled on this channel (the connection dropped)."""
        self._pending.pop(tag, None)

    def _settle(self, tag: int, state: int) -> None:
        if tag not in self._pending:
            return
        self._pending[tag] = state
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        through = self._skip_settled(self._acked_through)
        run_end = None
        for tag, state in self._pending.items():
            if state == _RUNNING or tag != through + 1:
                break
            if state == _ACK:  # a multiple ack names a tag still outstanding
                run_end = tag
            through = self._skip_settled(tag)
        frames: list[tuple[int, bool]] = []
        for tag in [t for t in self._pending if t <= through]:
            del self._pending[tag]
        if run_end is not None:
            frames.append((run_end, True))
        self._acked_through = through
        for tag, state in list(self._pending.items()):
            if state != _RUNNING:
                del self._pending[tag]
                self._settled_beyond.add(tag)
                if state == _ACK:
                    frames.append((tag, False))
        if frames:
            self._unsent.extend(frames)
            if not self._writing:
                # Refused once closed: the channel is gone, its deliveries come back.
                self._writing = self._sending.spawn(self._write(), "amqp-acks")

    def _skip_settled(self, tag: int) -> int:
        """`tag`, or past it the last of the consecutive tags already settled one by one."""
        while tag + 1 in self._settled_beyond:
            tag += 1
            self._settled_beyond.discard(tag)
        return tag

    async def _write(self) -> None:
        """The one writer: what the flushes left, in their order, all that waits in one
        write."""
        try:
            while self._unsent:
                frames, self._unsent = self._unsent, []
                await self._send(frames)
        finally:
            self._writing = False

    async def _send(self, frames: list[tuple[int, bool]]) -> None:
        """Acks in one write (aiormq's `basic_ack` is a write each)."""
        channel = self._channel
        try:
            if channel.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
            payload = ChannelFrame.marshall(
                channel.number,
                [spec.Basic.Ack(delivery_tag=tag, multiple=multiple) for tag, multiple in frames],
            )
            await channel.write_queue.put(payload)
        except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError) as e:
            # Unacked, they are redelivered and answered from memory.
            self._on_error(e)
            return
        self.frames += len(frames)

    async def close(self) -> None:
        await self._sending.close()
