from __future__ import annotations

import pytest

from vsmcp.node.children.config import RecursionSection
from vsmcp.node.children.errors import SpawnRefused
from vsmcp.node.children.guard import check_spawn, child_limits, lowered


def test_a_child_beyond_max_depth_is_refused_naming_the_limit() -> None:
    limits = RecursionSection(max_depth=2)
    check_spawn(1, limits, running=0)
    with pytest.raises(SpawnRefused, match=r"max_depth = 2.*depth 3"):
        check_spawn(2, limits, running=0)


def test_one_child_more_than_max_children_is_refused() -> None:
    limits = RecursionSection(max_children=2)
    check_spawn(0, limits, running=1)
    with pytest.raises(SpawnRefused, match="already runs 2 children"):
        check_spawn(0, limits, running=2)


def test_a_descendant_budget_below_max_children_limits_the_children() -> None:
    with pytest.raises(SpawnRefused):
        check_spawn(0, RecursionSection(max_children=4, max_descendants=1), running=1)


@pytest.mark.parametrize(
    ("max_children", "max_descendants"), [(4, 16), (1, 1), (3, 10), (2, 100), (5, 3)]
)
def test_the_whole_tree_stays_within_max_descendants(
    max_children: int, max_descendants: int
) -> None:
    def tree_size(limits: RecursionSection, depth_left: int) -> int:
        """The most descendants a node with `limits` can have."""
        if depth_left == 0:
            return 0
        n = min(limits.max_children, limits.max_descendants)
        return n * (1 + tree_size(child_limits(limits), depth_left - 1))

    limits = RecursionSection(
        max_depth=4, max_children=max_children, max_descendants=max_descendants
    )
    assert tree_size(limits, 4) <= max_descendants
    assert child_limits(limits).max_depth == 4


def test_while_system_5_tightens_limits_fewer_children_are_allowed() -> None:
    limits = RecursionSection(max_children=4, max_descendants=16)
    check_spawn(0, limits, running=1, factor=0.5)
    with pytest.raises(
        SpawnRefused,
        match=r"lowered from 4 while the node is short of capacity \(System 5's or System 3's"
        r" limits at 50%\)",
    ):
        check_spawn(0, limits, running=2, factor=0.5)


@pytest.mark.parametrize("factor", [0.0, 0.3, 0.5, 1.0, 2.0])
def test_lowered_limits_are_never_above_the_config(factor: float) -> None:
    limits = RecursionSection(max_depth=3, max_children=4, max_descendants=16)
    low = lowered(limits, factor)
    assert low.max_children <= 4 and low.max_descendants <= 16 and low.max_depth == 3
