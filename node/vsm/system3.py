"""System 3's side of the algedonic channel: it takes the weak signals into its aggregate.

Below the threshold a signal is not an emergency: S3 drains its lane every `interval_s`
(one owned loop, `algedonic-s3`) and adds what it took to the rolling balance, which the
viability score reads. Draining on a cadence rather than per signal is S3's nature (the
here-and-now control loop) and keeps a flood of weak signals from costing a wake-up
each; it also means such a signal is, by design, handled after any strong signal raised
at about the same time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.vsm.algedonic import Lane
from vsmcp.node.vsm.balance import AlgedonicBalance
from vsmcp.node.vsm.loop_service import LoopService

LOOP_NAME = "algedonic-s3"
DEFAULT_INTERVAL_S = 1.0


class System3Aggregate(LoopService):
    """Drains the S3 lane into `balance` every `interval_s`."""

    loop_name = LOOP_NAME

    def __init__(
        self,
        lane: Lane,
        balance: AlgedonicBalance,
        loops: LoopSupervisor,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float],
        order: Callable[[], int],
    ) -> None:
        super().__init__(loops)
        self._lane = lane
        self.balance = balance
        self._interval_s = interval_s
        self._clock = clock
        # The node-wide order in which S3 and S5 handle signals (`order` in the views).
        self._order = order
        self.batches = 0
        self.last_seq = 0  # the newest signal taken into the aggregate
        self.last_order = 0

    def drain(self) -> int:
        """Take what is queued into the aggregate now; returns how many."""
        taken = self._lane.take_all()
        if taken:
            self.balance.add(taken)
            self.batches += 1
            self.last_seq = taken[-1].seq
            self.last_order = self._order()
        return len(taken)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            self.drain()

    def _after_stop(self) -> None:
        self.drain()  # what was queued still counts in the last view

    def view(self) -> dict[str, Any]:
        return {
            "interval_s": self._interval_s,
            "queued": len(self._lane),
            "batches": self.batches,
            "last_seq": self.last_seq,
            "last_order": self.last_order,
            "aggregate": self.balance.view(self._clock()),
        }
