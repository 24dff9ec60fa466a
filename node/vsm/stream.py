"""The node's one event stream: publishers append, subscriber tasks drain in batches.

`publish` never blocks, never raises and never awaits: it appends the event to each
subscriber's bounded buffer, or counts a drop for a subscriber whose buffer is full, and
wakes an idle subscriber. Each subscriber is an owned, named task (`events-<name>`) that
takes its whole buffer at once and hands the batch to its handler, so the per-event cost
of the stream is one append. A handler that raises is logged and counted; its task goes
on with the next batch. A subscriber task that dies anyway is restarted.

Call `publish` from the event loop's thread only (it is not thread-safe; the node's
components all run on the loop).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from vsmcp.mesh.service import Service
from vsmcp.node.vsm.errors import VsmError
from vsmcp.node.vsm.events import Event

log = logging.getLogger(__name__)

DEFAULT_SUBSCRIBER_CAPACITY = 65_536  # events buffered per subscriber before drops
MAX_SUBSCRIBER_CAPACITY = 16 * 1024 * 1024
# On stop, each subscriber may finish its buffered events for this long, then is cancelled.
STOP_DRAIN_TIMEOUT_S = 5.0

BatchHandler = Callable[[list[Event]], Awaitable[None] | None]


class Subscriber:
    """One consumer of the stream and its counters."""

    __slots__ = (
        "buffer",
        "capacity",
        "crashes",
        "delivered",
        "dropped",
        "failures",
        "handler",
        "is_async",
        "kinds",
        "name",
        "task",
        "wake",
    )

    def __init__(
        self,
        name: str,
        handler: BatchHandler,
        capacity: int,
        kinds: frozenset[type[Event]] | None,
    ) -> None:
        self.name = name
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)
        self.capacity = capacity
        self.kinds = kinds
        self.buffer: list[Event] = []
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.dropped = 0  # events not buffered: the buffer was full
        self.delivered = 0  # events handed to the handler
        self.failures = 0  # batches whose handler raised
        self.crashes = 0  # times the task died and was restarted

    def stats(self) -> dict[str, int]:
        return {
            "buffered": len(self.buffer),
            "capacity": self.capacity,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "failures": self.failures,
            "crashes": self.crashes,
        }


class EventStream(Service):
    """The stream. `subscribe` before or after `start`; events published before start
    wait in the buffers (up to capacity)."""

    def __init__(self) -> None:
        self._subs: tuple[Subscriber, ...] = ()
        self._started = False
        self._closing = False
        self.after_stop = 0  # events published after stop (not delivered)
        # `publish(event)`: append for every subscriber; never blocks, never raises.
        # Rebuilt whenever the subscribers change (see `_rebuild_publish`).
        self.publish: Callable[[Event], None]
        self._rebuild_publish()

    # -- publishing ------------------------------------------------------------------

    def _rebuild_publish(self) -> None:
        """Make `publish` for the current subscribers: the common case (one subscriber
        taking every kind) is a length check and an append, with no loop."""
        subs = self._subs
        publish: Callable[[Event], None]
        if self._closing:

            def publish(event: Event) -> None:
                self.after_stop += 1

        elif len(subs) == 1 and subs[0].kinds is None:
            only = subs[0]
            capacity, wake = only.capacity, only.wake.set

            def publish(event: Event) -> None:
                buffer = only.buffer
                held = len(buffer)
                if held >= capacity:
                    only.dropped += 1
                    return
                if not held:
                    wake()
                buffer.append(event)

        else:

            def publish(event: Event) -> None:
                for sub in subs:
                    kinds = sub.kinds
                    if kinds is not None and event.__class__ not in kinds:
                        continue
                    buffer = sub.buffer
                    held = len(buffer)
                    if held >= sub.capacity:
                        sub.dropped += 1
                        continue
                    if not held:
                        sub.wake.set()
                    buffer.append(event)

        self.publish = publish

    def publish_many(self, events: Iterable[Event]) -> None:
        publish = self.publish
        for event in events:
            publish(event)

    # -- subscribers -----------------------------------------------------------------

    def subscribe(
        self,
        name: str,
        handler: BatchHandler,
        *,
        capacity: int = DEFAULT_SUBSCRIBER_CAPACITY,
        kinds: Iterable[type[Event]] | None = None,
    ) -> Subscriber:
        """Add a subscriber receiving batches of events (all kinds, or `kinds` only).
        `handler` may be a plain function or a coroutine function."""
        if any(s.name == name for s in self._subs):
            raise VsmError(f"a subscriber named {name!r} exists")
        if not 1 <= capacity <= MAX_SUBSCRIBER_CAPACITY:
            raise VsmError(f"subscriber capacity must be in 1..{MAX_SUBSCRIBER_CAPACITY}")
        sub = Subscriber(name, handler, capacity, frozenset(kinds) if kinds is not None else None)
        self._subs = (*self._subs, sub)
        self._rebuild_publish()
        if self._started and not self._closing:
            self._spawn(sub)
        return sub

    async def unsubscribe(self, name: str) -> None:
        """Remove a subscriber after it has handled what it had buffered."""
        sub = next((s for s in self._subs if s.name == name), None)
        if sub is None:
            return
        self._subs = tuple(s for s in self._subs if s is not sub)
        self._rebuild_publish()
        await self._finish(sub)

    def subscribers(self) -> tuple[Subscriber, ...]:
        return self._subs

    def room(self, kind: type[Event]) -> int:
        """Events of this kind that can be published now without a drop: the least free
        space of the buffers they go to. A fast producer (the MQTT telemetry reader)
        stops reading its input while this is low instead of losing events here."""
        free = [
            s.capacity - len(s.buffer) for s in self._subs if s.kinds is None or kind in s.kinds
        ]
        return min(free, default=MAX_SUBSCRIBER_CAPACITY)

    def capacity(self, kind: type[Event]) -> int:
        """The smallest buffer events of this kind go to (what `room` can be at most)."""
        sizes = [s.capacity for s in self._subs if s.kinds is None or kind in s.kinds]
        return min(sizes, default=MAX_SUBSCRIBER_CAPACITY)

    def stats(self) -> dict[str, Any]:
        return {
            "after_stop": self.after_stop,
            "subscribers": {s.name: s.stats() for s in self._subs},
        }

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for sub in self._subs:
            self._spawn(sub)

    async def stop(self) -> None:
        """Let each subscriber handle what it has buffered (bounded in time), then end."""
        if not self._started or self._closing:
            return
        self._closing = True
        self._rebuild_publish()
        await asyncio.gather(*(self._finish(sub) for sub in self._subs))

    def _spawn(self, sub: Subscriber) -> None:
        sub.task = asyncio.create_task(self._run(sub), name=f"events-{sub.name}")
        sub.task.add_done_callback(lambda task: self._task_done(sub, task))

    def _task_done(self, sub: Subscriber, task: asyncio.Task[None]) -> None:
        if task.cancelled() or sub.task is not task:
            return
        error = task.exception()
        if error is None:
            return
        sub.crashes += 1
        log.error("event subscriber %s died; restarting", sub.name, exc_info=error)
        if not self._closing and sub in self._subs:
            self._spawn(sub)

    async def _finish(self, sub: Subscriber) -> None:
        task = sub.task
        if task is None:
            return
        sub.wake.set()  # the task sees the stream closing (or itself removed) and drains
        # `wait`, not `wait_for`: a task that died while draining must not fail `stop`
        # (its done callback has logged it).
        await asyncio.wait({task}, timeout=STOP_DRAIN_TIMEOUT_S)
        if not task.done():
            log.warning("event subscriber %s did not drain in time; cancelled", sub.name)
            task.cancel()
            # `wait` raises nothing: our own cancellation (of stop) still reaches us.
            await asyncio.wait({task})
        sub.task = None

    def _ending(self, sub: Subscriber) -> bool:
        return self._closing or sub not in self._subs

    async def _run(self, sub: Subscriber) -> None:
        while True:
            if not sub.buffer:
                if self._ending(sub):
                    return
                # Publishers set `wake` when they append to an empty buffer: cleared
                # only while the buffer is empty, so no append is missed.
                sub.wake.clear()
                await sub.wake.wait()
                continue
            batch, sub.buffer = sub.buffer, []
            await self._deliver(sub, batch)
            # A handler that publishes (an `emit` action) refills buffers: let the
            # publishers and other subscribers run between batches.
            await asyncio.sleep(0)

    async def _deliver(self, sub: Subscriber, batch: list[Event]) -> None:
        try:
            result = sub.handler(batch)
            if sub.is_async and result is not None:
                await result
        except Exception:  # top-level handler of a subscriber: the stream goes on
            sub.failures += 1
            log.exception("event subscriber %s failed on a batch of %d", sub.name, len(batch))
        sub.delivered += len(batch)
