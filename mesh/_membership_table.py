"""Member table of one membership state machine, built to scale in one process.

A simulator runs thousands of state machines side by side; a naive full table per
node is N^2 records. So a table is a shared, immutable `Roster` (the members every
node knew alive at start, with their signed `Alive` records) plus a per-node
copy-on-write overlay holding only the members whose view differs from the roster
(or that the roster does not know). A real node passes no roster: everything lives in
the overlay, which is then just a dict.

Members are addressed by a dense index (roster members first, then members learnt
later; removing one moves the last into its slot), which is what the probe order
permutes: `ProbeCycle` walks a random permutation of the index space without
materialising it for big tables.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from vsmcp.mesh._membership_wire import Alive, Left, MemberState, Suspect, Verdict

ACTIVE_STATES = (MemberState.ALIVE, MemberState.SUSPECT)
SHUFFLED_LIST_MAX_MEMBERS = 256


class Roster:
    """Immutable baseline shared read-only by many tables: members alive at start."""

    __slots__ = ("index", "records")

    def __init__(self, records: Sequence[Alive]) -> None:
        self.records: tuple[Alive, ...] = tuple(records)
        self.index: dict[str, int] = {r.member: i for i, r in enumerate(self.records)}
        if len(self.index) != len(self.records):
            raise ValueError("duplicate member ids in roster")

    def __len__(self) -> int:
        return len(self.records)


@dataclass(slots=True)
class MemberRecord:
    """One member as this node sees it. `alive` is its latest signed alive record;
    `status` the item that put it in a non-alive state (None while alive)."""

    alive: Alive
    state: MemberState
    incarnation: int
    changed_at: float
    status: Suspect | Verdict | Left | None = None

    @property
    def member(self) -> str:
        return self.alive.member


_EMPTY_ROSTER = Roster(())


class MemberTable:
    """Roster + copy-on-write overlay. Keeps counts of active (alive or suspect)
    members and the set of down (zombie or dead) ones incrementally."""

    __slots__ = ("_active", "_down", "_extra", "_overlay", "_roster")

    def __init__(self, roster: Roster | None = None) -> None:
        self._roster = roster if roster is not None else _EMPTY_ROSTER
        self._overlay: dict[str, MemberRecord] = {}
        self._extra: list[str] = []
        self._active = len(self._roster)
        self._down: set[str] = set()

    def __len__(self) -> int:
        return len(self._roster) + len(self._extra)

    def __contains__(self, member: str) -> bool:
        return member in self._overlay or member in self._roster.index

    @property
    def active_count(self) -> int:
        return self._active

    @property
    def down(self) -> set[str]:
        return self._down

    @property
    def overlay_size(self) -> int:
        return len(self._overlay)

    def id_at(self, index: int) -> str:
        base = len(self._roster)
        if index < base:
            return self._roster.records[index].member
        return self._extra[index - base]

    def get(self, member: str) -> MemberRecord | None:
        """The record of `member` (a fresh copy for roster-only members: write it back
        with `put` to change it)."""
        rec = self._overlay.get(member)
        if rec is not None:
            return rec
        i = self._roster.index.get(member)
        if i is None:
            return None
        alive = self._roster.records[i]
        return MemberRecord(alive, MemberState.ALIVE, alive.incarnation, 0.0)

    def state_of(self, member: str) -> MemberState | None:
        rec = self._overlay.get(member)
        if rec is not None:
            return rec.state
        return MemberState.ALIVE if member in self._roster.index else None

    def is_active(self, member: str) -> bool:
        rec = self._overlay.get(member)
        if rec is not None:
            return rec.state <= MemberState.SUSPECT
        return member in self._roster.index

    def put(self, rec: MemberRecord, old_state: MemberState | None) -> None:
        """Store `rec` (new or changed); `old_state` is its state before the change."""
        member = rec.member
        if old_state is None:
            if member not in self._overlay and member not in self._roster.index:
                self._extra.append(member)
        elif old_state <= MemberState.SUSPECT:
            self._active -= 1
        if old_state in (MemberState.ZOMBIE, MemberState.DEAD):
            self._down.discard(member)
        if rec.state <= MemberState.SUSPECT:
            self._active += 1
        elif rec.state in (MemberState.ZOMBIE, MemberState.DEAD):
            self._down.add(member)
        self._overlay[member] = rec

    def remove(self, member: str) -> bool:
        """Forget a member learnt after start (roster members stay: the roster is shared
        and immutable). Indices change: the last member takes the removed one's."""
        if member in self._roster.index:
            return False
        rec = self._overlay.pop(member, None)
        if rec is None:
            return False
        if rec.state <= MemberState.SUSPECT:
            self._active -= 1
        self._down.discard(member)
        extra = self._extra
        index = extra.index(member)
        last = extra.pop()
        if index < len(extra):
            extra[index] = last
        return True

    def __iter__(self) -> Iterator[MemberRecord]:
        for i in range(len(self)):
            rec = self.get(self.id_at(i))
            if rec is not None:
                yield rec

    def sample_active(self, k: int, exclude: Iterable[str], rng: random.Random) -> list[str]:
        """Up to `k` distinct random active members not in `exclude`."""
        if k <= 0:
            return []
        excluded = set(exclude)
        size = len(self)
        if size <= 64 or self._active < 4 * (k + len(excluded)):
            pool = [
                m
                for m in (self.id_at(i) for i in range(size))
                if m not in excluded and self.is_active(m)
            ]
            return rng.sample(pool, min(k, len(pool)))
        picked: list[str] = []
        seen: set[str] = set()
        for _ in range(16 * k + 16):
            m = self.id_at(rng.randrange(size))
            if m in excluded or m in seen or not self.is_active(m):
                continue
            seen.add(m)
            picked.append(m)
            if len(picked) == k:
                break
        return picked


class ProbeCycle:
    """Round-robin over a random permutation of the member index space, renewed each
    time it is exhausted. Small tables use a shuffled list; big ones an affine
    permutation i -> (a*i + b) mod n with gcd(a, n) = 1 (O(1) memory)."""

    __slots__ = ("_a", "_b", "_n", "_order", "_pos")

    def __init__(self) -> None:
        self._order: list[int] | None = None
        self._a = 1
        self._b = 0
        self._n = 0
        self._pos = 0

    def next_index(self, size: int, rng: random.Random) -> int | None:
        if size == 0:
            return None
        if self._pos >= self._n:
            self._renew(size, rng)
        pos = self._pos
        self._pos += 1
        if self._order is not None:
            return self._order[pos]
        return (self._a * pos + self._b) % self._n

    def _renew(self, size: int, rng: random.Random) -> None:
        self._n = size
        self._pos = 0
        if size <= SHUFFLED_LIST_MAX_MEMBERS:
            order = list(range(size))
            rng.shuffle(order)
            self._order = order
            return
        self._order = None
        self._b = rng.randrange(size)
        while True:
            a = rng.randrange(1, size)
            if math.gcd(a, size) == 1:
                self._a = a
                return
