"""Load shedding at the node's entry: refuse calls of low priority classes for a while.

Priority classes rank `low < normal < high < critical`. System 5's `shed` response sets
a level: while it lasts, a call whose class ranks at or below it is refused at the entry
(before it is routed anywhere), with a `denial` event whose `limit` is `shed`. A call's
class is the one its client named (`_meta` `vsmcp/priority`, capped by its grant;
`node.vsm.priority`); `critical` is never shed.
"""

from __future__ import annotations

import time

from vsmcp.node.vsm.events import Denial, EventSink
from vsmcp.node.vsm.priority import CRITICAL, PRIORITY_CLASSES, priority_rank


class LoadShedder:
    """The entry's shedding level (None: nothing is shed) and what it refused."""

    def __init__(self, events: EventSink | None = None) -> None:
        self.events = events
        self.level: str | None = None
        self.shed = 0

    def set_level(self, level: str | None) -> None:
        if level is not None and level not in PRIORITY_CLASSES:
            raise ValueError(f"unknown priority class {level!r}")
        self.level = level

    def refuses(
        self,
        priority: str,
        *,
        origin: str,
        zone: str,
        tool: str,
        entry_origin: str | None = None,
    ) -> bool:
        """True (and a `denial` event) when a call of `priority` must be shed now."""
        level = self.level
        if level is None or priority == CRITICAL or priority_rank(priority) > priority_rank(level):
            return False
        self.shed += 1
        if self.events is not None:
            self.events.publish(
                Denial(
                    ts=time.time(),
                    origin=origin,
                    zone=zone,
                    limit="shed",
                    blocked=tool,
                    entry_origin=entry_origin,
                )
            )
        return True
