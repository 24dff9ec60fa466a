"""When dead and left members leave the member table, and what they leave behind.

Without this the table keeps every member that ever joined: memory, and the full state
exchanged by push-pull, grow with churn. Serf's answer, followed here: a DEAD member is
kept `dead_reap_after_s` (it may be partitioned rather than crashed; while it is kept,
reconnect probes tell it its verdict once the network heals, and it refutes), a LEFT
member `left_reap_after_s`. At most `max_down_members` dead or left members are kept at
once; beyond that the one due soonest goes first.

A reaped member leaves a tombstone: the incarnation and the signed status (verdict or
left) that put it down, and its last metadata (where to reach it). Gossip about it at
or below that incarnation is ignored (stale push-pull state cannot resurrect it), and
when the member itself speaks up (a restarted node, a healed partition) it is told its
status, so it refutes with a higher incarnation that everyone accepts. Tombstones are
bounded by the same `max_down_members`, oldest forgotten first.
"""

from __future__ import annotations

from typing import NamedTuple

from vsmcp.mesh._membership_wire import Left, MemberState, Verdict

REAPED_STATES = (MemberState.DEAD, MemberState.LEFT)


class Tombstone(NamedTuple):
    incarnation: int
    status: Verdict | Left
    meta: bytes = b""


class Reaper:
    """Due times of down members (one insertion-ordered dict per state: every entry of a
    state waits the same time, so insertion order is due order) and tombstones."""

    __slots__ = ("_due", "_max_members", "_tombstones")

    def __init__(self, max_members: int) -> None:
        if max_members < 1:
            raise ValueError("max_members must be >= 1")
        self._max_members = max_members
        self._due: dict[MemberState, dict[str, float]] = {s: {} for s in REAPED_STATES}
        self._tombstones: dict[str, Tombstone] = {}

    def __len__(self) -> int:
        """Members waiting to be reaped."""
        return sum(len(due) for due in self._due.values())

    def schedule(self, member: str, state: MemberState, due: float) -> None:
        """`member` went `state` (DEAD or LEFT): reap it at `due`, replacing any earlier
        schedule."""
        self.cancel(member)
        self._due[state][member] = due

    def cancel(self, member: str) -> None:
        for due in self._due.values():
            due.pop(member, None)

    def next_due(self) -> float | None:
        fronts = [self._front(state) for state in REAPED_STATES]
        times = [front[1] for front in fronts if front is not None]
        return min(times) if times else None

    def take_due(self, now: float) -> list[str]:
        """Members to reap now: those due, then (beyond the cap) those due soonest."""
        taken: list[str] = []
        for due in self._due.values():
            while due:
                member, when = next(iter(due.items()))
                if when > now:
                    break
                del due[member]
                taken.append(member)
        while len(self) > self._max_members:
            fronts = [f for f in (self._front(s) for s in REAPED_STATES) if f is not None]
            member = min(fronts, key=lambda front: front[1])[0]
            self.cancel(member)
            taken.append(member)
        return taken

    def bury(self, member: str, tombstone: Tombstone) -> None:
        self._tombstones.pop(member, None)
        self._tombstones[member] = tombstone
        if len(self._tombstones) > self._max_members:
            del self._tombstones[next(iter(self._tombstones))]

    def tombstone(self, member: str) -> Tombstone | None:
        return self._tombstones.get(member)

    def exhume(self, member: str) -> None:
        """`member` is back (at a higher incarnation): forget its tombstone."""
        self._tombstones.pop(member, None)

    def _front(self, state: MemberState) -> tuple[str, float] | None:
        due = self._due[state]
        return next(iter(due.items())) if due else None
