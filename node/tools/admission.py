"""Admission at an entry through its adaptive concurrency limit (`node.vsm.concurrency`).

`EntryGate.admit` answers at once: the call may run (it returns the start time to hand
back to `done`) or it is refused with `ConcurrencyLimited` (the "overloaded" JSON-RPC
error with a retry-after) and a `denial` event whose `limit` is `concurrency:<entry>`.
Only calls that ran here feed the limit (`done(..., sample=True)`): a call refused
further in or cancelled says nothing about this entry's latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from vsmcp.node.tools.errors import ConcurrencyLimited
from vsmcp.node.tools.model import CallContext
from vsmcp.node.vsm.events import Denial, EventSink

if TYPE_CHECKING:
    from vsmcp.node.vsm.concurrency import AdaptiveLimiter


class EntryGate:
    """One entry's limiter with the node's clock and event sink."""

    __slots__ = ("_clock", "events", "limiter")

    def __init__(
        self,
        limiter: AdaptiveLimiter,
        events: EventSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiter = limiter
        self.events = events
        self._clock = clock

    def admit(self, ctx: CallContext, tool: str) -> float:
        """The call's start time, or `ConcurrencyLimited` at once."""
        limiter = self.limiter
        if limiter.try_acquire(ctx.priority):
            return self._clock()
        if self.events is not None:
            self.events.publish(
                Denial(
                    ts=time.time(),
                    origin=ctx.origin,
                    zone=ctx.caller_zone,
                    limit=f"concurrency:{limiter.name}",
                    blocked=tool,
                    entry_origin=ctx.entry_origin,
                )
            )
        raise ConcurrencyLimited(
            limiter.name, ctx.priority, limiter.limit, limiter.inflight, limiter.retry_after_s()
        )

    def done(self, started: float, *, sample: bool) -> None:
        now = self._clock()
        self.limiter.release(now - started if sample else None, now)
