"""mesh._membership_reaper and MemberTable.remove: due order, the cap, tombstones."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsmcp.mesh._membership_reaper import Reaper, Tombstone
from vsmcp.mesh._membership_table import MemberRecord, MemberTable
from vsmcp.mesh._membership_wire import Alive, Left, MemberState

DEAD, LEFT = MemberState.DEAD, MemberState.LEFT


def _left(member: str, incarnation: int = 0) -> Left:
    return Left(member, incarnation, b"\0" * 64)


def test_members_come_due_in_order_and_rescheduling_replaces() -> None:
    reaper = Reaper(max_members=10)
    reaper.schedule("a", DEAD, 10.0)
    reaper.schedule("b", LEFT, 5.0)
    reaper.schedule("c", DEAD, 12.0)
    reaper.schedule("a", DEAD, 20.0)  # down again later: the later time counts
    assert reaper.next_due() == 5.0
    assert reaper.take_due(4.9) == []
    assert sorted(reaper.take_due(12.0)) == ["b", "c"]
    assert reaper.take_due(12.0) == []
    assert reaper.next_due() == 20.0
    reaper.cancel("a")
    assert reaper.next_due() is None
    assert len(reaper) == 0


def test_beyond_the_cap_the_earliest_due_goes_first() -> None:
    reaper = Reaper(max_members=2)
    reaper.schedule("a", DEAD, 100.0)
    reaper.schedule("b", LEFT, 50.0)
    reaper.schedule("c", DEAD, 101.0)
    assert reaper.take_due(0.0) == ["b"]
    assert len(reaper) == 2


def test_tombstones_are_bounded_oldest_forgotten_first() -> None:
    reaper = Reaper(max_members=2)
    for name in "abc":
        reaper.bury(name, Tombstone(3, _left(name, 3)))
    assert reaper.tombstone("a") is None
    assert reaper.tombstone("c") == Tombstone(3, _left("c", 3))
    reaper.exhume("c")
    assert reaper.tombstone("c") is None
    with pytest.raises(ValueError):
        Reaper(max_members=0)


def _record(member: str, state: MemberState) -> MemberRecord:
    return MemberRecord(Alive(member, 0, b"", b"\0" * 64), state, 0, 0.0)


@given(
    st.lists(st.sampled_from(list(MemberState)), min_size=1, max_size=12),
    st.data(),
)
def test_remove_keeps_counts_and_indices_consistent(
    states: list[MemberState], data: st.DataObject
) -> None:
    table = MemberTable()
    for i, state in enumerate(states):
        table.put(_record(f"m{i}", state), None)
    removed = data.draw(st.sets(st.integers(0, len(states) - 1)))
    for i in removed:
        assert table.remove(f"m{i}")
        assert not table.remove(f"m{i}")
    kept = {f"m{i}": s for i, s in enumerate(states) if i not in removed}
    assert len(table) == len(kept)
    assert {table.id_at(i) for i in range(len(table))} == set(kept)
    assert table.active_count == sum(s <= MemberState.SUSPECT for s in kept.values())
    assert table.down == {m for m, s in kept.items() if s in (MemberState.ZOMBIE, DEAD)}
    assert {r.member for r in table} == set(kept)
    if kept:
        assert set(table.sample_active(len(kept), (), random.Random(0))) == {
            m for m, s in kept.items() if s <= MemberState.SUSPECT
        }
