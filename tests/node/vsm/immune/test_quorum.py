"""Counting observations toward a node block: distinct alive observers, never the
subject, a quorum as membership verdicts define it."""

from __future__ import annotations

from vsmcp.node.vsm.immune.quorum import ObservationTally

NOW = 1_000_000


def _tally(alive: list[str], quorum_max: int = 3) -> ObservationTally:
    return ObservationTally(lambda: alive, quorum_max)


def test_the_quorum_is_a_majority_of_the_other_alive_members_capped_like_verdicts() -> None:
    assert _tally(["a", "b", "c", "d", "e", "x"]).quorum("x") == 3  # 5 others: 3
    assert _tally(["a", "b", "x"]).quorum("x") == 2  # 2 others: 2
    assert _tally(["a", "x"]).quorum("x") == 1
    assert _tally([f"n{i}" for i in range(20)] + ["x"]).quorum("x") == 3  # capped
    assert _tally([f"n{i}" for i in range(20)] + ["x"], quorum_max=7).quorum("x") == 7


def test_one_observer_many_times_is_one_vote() -> None:
    tally = _tally(["a", "b", "c", "d", "e", "x"])
    for _ in range(10):
        tally.add("x", "a", NOW + 60_000)
    assert tally.observers("x", NOW) == ["a"]
    assert not tally.confirmed("x", NOW)
    tally.add("x", "b", NOW + 60_000)
    tally.add("x", "c", NOW + 60_000)
    assert tally.confirmed("x", NOW)


def test_the_subject_unknown_nodes_and_expired_observations_do_not_count() -> None:
    tally = _tally(["a", "b", "c", "d", "e", "x"])
    tally.add("x", "x", NOW + 60_000)  # the subject about itself
    tally.add("x", "stranger", NOW + 60_000)  # not an alive member here
    tally.add("x", "a", NOW - 1)  # expired
    tally.add("x", "b", NOW + 60_000)
    tally.add("x", "c", NOW + 60_000)
    assert tally.observers("x", NOW) == ["b", "c"]
    assert not tally.confirmed("x", NOW)
    tally.remove("x", "b")
    assert tally.observers("x", NOW) == ["c"]
