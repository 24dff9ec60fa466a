"""Counting observations: a node block needs a quorum of distinct members that saw it.

Each node that sees bad envelopes from a peer publishes an `observation` policy (signed,
short-lived) naming that peer. `ObservationTally` holds the live ones, per subject and
observer. A subject is confirmed when distinct observers — members this node counts as
alive (itself included), never the subject itself — reach the quorum that membership
verdicts use: q = min(quorum_max, majority of the alive members other than the subject)
(`mesh.membership.quorum_size`). One node, however loud, holds one vote.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from vsmcp.mesh.membership import quorum_size

AliveMembers = Callable[[], Collection[str]]
"""The node ids this node holds alive, itself included."""


class ObservationTally:
    def __init__(self, alive: AliveMembers, quorum_max: int) -> None:
        self._alive = alive
        self._quorum_max = quorum_max
        # subject -> observer -> expiry (ms since the epoch)
        self._seen: dict[str, dict[str, int]] = {}

    def add(self, subject: str, observer: str, expires_at_ms: int) -> None:
        self._seen.setdefault(subject, {})[observer] = expires_at_ms

    def remove(self, subject: str, observer: str) -> None:
        observers = self._seen.get(subject)
        if observers is None:
            return
        observers.pop(observer, None)
        if not observers:
            del self._seen[subject]

    def quorum(self, subject: str) -> int:
        others = [m for m in self._alive() if m != subject]
        return quorum_size(len(others), self._quorum_max)

    def observers(self, subject: str, now_ms: int) -> list[str]:
        """Distinct live observers of `subject` that count: alive members, not the subject."""
        alive = set(self._alive())
        seen = self._seen.get(subject, {})
        return sorted(
            observer
            for observer, expires in seen.items()
            if expires > now_ms and observer != subject and observer in alive
        )

    def confirmed(self, subject: str, now_ms: int) -> bool:
        return len(self.observers(subject, now_ms)) >= self.quorum(subject)

    def subjects(self) -> list[str]:
        return list(self._seen)
